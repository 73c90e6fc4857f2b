# Script checks run only on agents started with -enable-script-checks (or, for a
# config file such as this one given with -config-file, -enable-local-script-checks).
service {
  name = "batch"
  port = 9000
  check {
    args     = ["/bin/sh", "-c", "test -d /tmp"]
    interval = "30s"
    timeout  = "5s"
  }
}
