# The demo's front end (examples/demo/app.py web): it calls `api` at 127.0.0.1:9191, the
# upstream listener of its sidecar proxy, which the agent registers and starts.
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
    name     = "web answers on /health"
    http     = "http://127.0.0.1:8080/health"
    method   = "GET"
    interval = "10s"
    timeout  = "2s"
  }
  connect {
    sidecar_service {
      proxy {
        upstreams = [
          {
            destination_name = "api"
            local_bind_port  = 9191
          }
        ]
      }
    }
  }
}
