# The demo's back end (examples/demo/app.py api). Its sidecar proxy takes mutual-TLS
# connections from other sidecars, checks intentions, and passes them to 127.0.0.1:9090.
service {
  name = "api"
  id   = "api-1"
  port = 9090
  meta { version = "v1" }
  check {
    id       = "api-tcp"
    name     = "api port open"
    tcp      = "127.0.0.1:9090"
    interval = "10s"
    timeout  = "1s"
  }
  connect {
    sidecar_service {}
  }
}
