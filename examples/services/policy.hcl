# Deny service-to-service traffic unless an intention allows it. Recommended for
# every agent: without it (the default, as in Consul with ACLs off) everything is allowed.
default_intention_policy = "deny"
