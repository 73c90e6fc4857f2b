# A dev agent with ACLs on, for the README tour: nothing is allowed without a token
# until `mesh acl bootstrap` hands out the management token.
acl {
  enabled        = true
  default_policy = "deny"
  down_policy    = "extend-cache"
}
