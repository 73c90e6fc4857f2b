# A web service with an HTTP check. For `make run` the check points at the agent's
# own HTTP API, so it passes without anything else running.
service {
  name = "web"
  id   = "web-1"
  port = 8080
  tags = ["v1", "primary"]
  meta = {
    version = "1.0.0"
  }
  check {
    id       = "web-http"
    name     = "web answers on /v1/status/leader"
    http     = "http://127.0.0.1:8500/v1/status/leader"
    method   = "GET"
    interval = "10s"
    timeout  = "2s"
  }
}
