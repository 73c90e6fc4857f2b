# A second instance of api, the canary (examples/demo/app.py api on 9092), with
# Meta version v2: a service-resolver subset selects it, a service-splitter sends it a
# share of api's traffic (README, 5-minute tour).
service {
  name = "api"
  id   = "api-2"
  port = 9092
  meta { version = "v2" }
  check {
    id       = "api-2-tcp"
    name     = "api canary port open"
    tcp      = "127.0.0.1:9092"
    interval = "10s"
    timeout  = "1s"
  }
  connect {
    sidecar_service {}
  }
}
