"""Traffic-management config entries: `service-resolver`, `service-splitter`, and the
`UpstreamConfig` and `RateLimits` blocks of `service-defaults`, decoded with Consul's
field names and rules (catalog.config_decode.Obj: every field read by name, unknown keys
refused, errors naming the field path). Pure.

- `service-resolver`: `ConnectTimeout`, `RequestTimeout` (Go durations, stored as
  strings like the router's timeouts), `DefaultSubset`, `Subsets {name: {Filter,
  OnlyPassing}}`, `Redirect {Service, ServiceSubset, Datacenter}`, `Failover {"<subset>"
  | "*": {Service, ServiceSubset, Datacenters[], Targets[] {Service, ServiceSubset,
  Datacenter}}}`, `LoadBalancer {Policy, LeastRequestConfig, RingHashConfig,
  HashPolicies[]}`, `Meta`. Peers, sameness groups, failover policies and locality
  are Consul features mesh lacks: refused by name unless empty.
- `service-splitter`: `Splits[] {Weight, Service, ServiceSubset, RequestHeaders,
  ResponseHeaders}`, `Meta`. Weights are kept to two decimals and must add up to 100.
  A deliberate departure from Consul: Consul takes a splitter only for a service whose
  protocol is http; mesh sidecars also split tcp services, one choice per connection,
  so a splitter needs no particular protocol here (routers still need http).
- `service-defaults` `UpstreamConfig {Defaults, Overrides[] {Name, ...}}` (connect
  timeout, protocol, circuit-breaker limits, passive health checks of the upstreams the
  service calls) and `RateLimits {InstanceLevel}` (what the service's own sidecar lets
  in); the agent merges both into its proxies' registrations (agent/local/central.py).

Which subsets a route, split, redirect or failover may name depends on other entries;
that is checked when the chains compile (catalog.discovery_chain), not here, except for
references a resolver makes to its own subsets.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .config_decode import Obj, check_protocol, header_modifiers, path_match, service_ref, unblock
from .durations import format_duration
from .errors import InvalidRequest
from .fields import INT64_MAX
from .filter import compile_filter
from .regex import RegexError, compile_re2

__all__ = ["parse_resolver", "parse_splitter", "parse_upstream_config", "parse_rate_limits", "LB_POLICIES",
           "HASH_BASED"]

_SUBSET = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_SUBSET_MAX = 63
LB_POLICIES = ("", "random", "round_robin", "least_request", "ring_hash", "maglev")
HASH_BASED = ("ring_hash", "maglev")
_HASH_FIELDS = ("header", "cookie", "query_parameter")
_UINT32 = (1 << 32) - 1


def _timeout(obj: Obj, field: str, out: dict[str, Any]) -> None:
    seconds = obj.duration(field)
    if seconds:
        out[field] = format_duration(seconds)


def _put(out: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """`fields` with a value, added to `out` in order (empty ones left out, as Consul's
    omitempty writes them)."""
    for key, value in fields.items():
        if value:
            out[key] = value
    return out


def _user_map(obj: Obj, field: str) -> dict[str, Any]:
    """A map whose keys are names the user chose (subset names, failover keys): read
    whole, keys kept as written."""
    value = unblock(obj.raw(field))
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{obj.name(field)} must be an object")
    return value


# ---- service-resolver -------------------------------------------------------------


def parse_resolver(top: Obj, name: str) -> dict[str, Any]:
    service_ref(name, "Name")
    body: dict[str, Any] = {}
    for field in ("ConnectTimeout", "RequestTimeout"):
        _timeout(top, field, body)
    subsets = _subsets(top)
    default_subset = top.str("DefaultSubset")
    if default_subset and default_subset not in subsets:
        raise InvalidRequest(f'DefaultSubset "{default_subset}" is not a valid subset')
    redirect = _redirect(top.obj("Redirect"), name, subsets)
    failover = _failovers(top, name, subsets)
    if redirect and failover:
        raise InvalidRequest("Redirect and Failover cannot both be set")
    balancer = top.obj("LoadBalancer")
    load_balancer = _load_balancer(balancer) if balancer is not None else {}
    top.unsupported("PrioritizeByLocality")
    _put(body, DefaultSubset=default_subset)
    if subsets:
        body["Subsets"] = subsets
    _put(body, Redirect=redirect, Failover=failover, LoadBalancer=load_balancer, Meta=top.meta())
    return body


def _subsets(top: Obj) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for subset, definition in sorted(_user_map(top, "Subsets").items()):
        if not subset:
            raise InvalidRequest("Subset defined with empty name")
        if len(subset) > _SUBSET_MAX or not _SUBSET.match(subset):
            raise InvalidRequest(f'Subset "{subset}" is invalid: a subset name is at most {_SUBSET_MAX} lower-case '
                                 "letters, digits and dashes, beginning and ending with a letter or digit")
        obj = Obj({} if definition is None else definition, f"Subsets[{subset!r}]")
        text = obj.str("Filter")
        if text:
            try:
                compile_filter(text)
            except InvalidRequest as exc:
                raise InvalidRequest(f'Filter for subset "{subset}" is not a valid expression: {exc}') from None
        only_passing = obj.bool("OnlyPassing")
        obj.finish()
        out[subset] = _put({}, Filter=text, OnlyPassing=only_passing)
    return out


def _redirect(obj: Obj | None, name: str, subsets: dict[str, Any]) -> dict[str, Any]:
    if obj is None:
        return {}
    obj.enterprise()
    obj.unsupported("Peer", "SamenessGroup")
    service, subset, datacenter = obj.str("Service"), obj.str("ServiceSubset"), obj.str("Datacenter")
    obj.finish()
    if not (service or subset or datacenter):
        raise InvalidRequest("Redirect is empty")
    if service:
        service_ref(service, obj.name("Service"))
    elif subset:
        raise InvalidRequest("Redirect.ServiceSubset defined without Redirect.Service")
    if subset and service.lower() == name.lower() and subset not in subsets:
        raise InvalidRequest(f'Redirect.ServiceSubset "{subset}" is not a valid subset of "{name}"')
    return _put({}, Service=service, ServiceSubset=subset, Datacenter=datacenter)


def _failovers(top: Obj, name: str, subsets: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, definition in sorted(_user_map(top, "Failover").items()):
        prefix = f'Bad Failover["{key}"]'
        if key != "*" and key not in subsets:
            raise InvalidRequest(f"{prefix}: not a valid subset")
        out[key] = _failover(Obj({} if definition is None else definition, f"Failover[{key!r}]"), prefix, name,
                             subsets)
    return out


def _failover(obj: Obj, prefix: str, name: str, subsets: dict[str, Any]) -> dict[str, Any]:
    obj.enterprise()
    obj.unsupported("SamenessGroup", "Policy")
    service, subset = obj.str("Service"), obj.str("ServiceSubset")
    datacenters = obj.str_list("Datacenters")
    targets = [_failover_target(t, f"{prefix}.Targets[{i}]", name, subsets) for i, t in enumerate(obj.objs("Targets"))]
    obj.finish()
    if not (service or subset or datacenters or targets):
        raise InvalidRequest(f"{prefix}: one of Service, ServiceSubset, Targets, or Datacenters is required")
    if service:
        service_ref(service, f"{prefix}.Service")
    if subset and (not service or service.lower() == name.lower()) and subset not in subsets:
        raise InvalidRequest(f'{prefix}: ServiceSubset "{subset}" is not a valid subset of "{name}"')
    for field, given in (("Datacenters", datacenters), ("ServiceSubset", subset), ("Service", service)):
        if given and targets:
            raise InvalidRequest(f"{prefix}: Targets cannot be set with {field}")
    if any(not dc for dc in datacenters):
        raise InvalidRequest(f"{prefix}.Datacenters: found empty datacenter")
    return _put({}, Service=service, ServiceSubset=subset, Datacenters=datacenters, Targets=targets)


def _failover_target(obj: Obj, prefix: str, name: str, subsets: dict[str, Any]) -> dict[str, Any]:
    obj.enterprise()
    obj.unsupported("Peer")
    service, subset, datacenter = obj.str("Service"), obj.str("ServiceSubset"), obj.str("Datacenter")
    obj.finish()
    if service:
        service_ref(service, f"{prefix}.Service")
    if subset and (not service or service.lower() == name.lower()) and subset not in subsets:
        raise InvalidRequest(f'{prefix}: ServiceSubset "{subset}" is not a valid subset of "{name}"')
    if not (service or subset or datacenter):
        raise InvalidRequest(f"{prefix}: one of Service, ServiceSubset or Datacenter is required")
    return _put({}, Service=service, ServiceSubset=subset, Datacenter=datacenter)


def _load_balancer(lb: Obj) -> dict[str, Any]:
    policy = lb.str("Policy")
    if policy not in LB_POLICIES:
        raise InvalidRequest(f'Bad LoadBalancer policy: "{policy}" is not supported '
                             f"(one of {', '.join(p for p in LB_POLICIES if p)})")
    least, ring = lb.obj("LeastRequestConfig"), lb.obj("RingHashConfig")
    out = _put({}, Policy=policy)
    if least is not None:
        if policy != "least_request":
            raise InvalidRequest("Bad LoadBalancer configuration. LeastRequestConfig specified for incompatible "
                                 f'load balancing policy "{policy}"')
        _put(out, LeastRequestConfig=_put({}, ChoiceCount=least.int("ChoiceCount", hi=_UINT32)))
        least.finish()
    if ring is not None:
        if policy != "ring_hash":
            raise InvalidRequest("Bad LoadBalancer configuration. RingHashConfig specified for incompatible "
                                 f'load balancing policy "{policy}"')
        low, high = ring.int("MinimumRingSize", hi=INT64_MAX), ring.int("MaximumRingSize", hi=INT64_MAX)
        ring.finish()
        if low and high and low > high:
            raise InvalidRequest("LoadBalancer.RingHashConfig.MinimumRingSize must not exceed MaximumRingSize")
        _put(out, RingHashConfig=_put({}, MinimumRingSize=low, MaximumRingSize=high))
    policies = [_hash_policy(hp, i) for i, hp in enumerate(lb.objs("HashPolicies"))]
    lb.finish()
    if policies and policy not in HASH_BASED:
        raise InvalidRequest(f'Bad LoadBalancer configuration: HashPolicies specified for non-hash-based Policy: '
                             f'"{policy}"')
    return _put(out, HashPolicies=policies)


def _hash_policy(hp: Obj, i: int) -> dict[str, Any]:
    prefix = f"Bad LoadBalancer HashPolicy[{i}]"
    field, value, source_ip, terminal = hp.str("Field"), hp.str("FieldValue"), hp.bool("SourceIP"), hp.bool("Terminal")
    cookie = hp.obj("CookieConfig")
    cookie_config: dict[str, Any] = {}
    if cookie is not None:
        session, path = cookie.bool("Session"), cookie.str("Path")
        ttl = cookie.duration("TTL")
        cookie.finish()
        if field != "cookie":
            raise InvalidRequest(f'{prefix}: cookie_config provided for "{field}"')
        if session and ttl:
            raise InvalidRequest(f"{prefix}: a session cookie cannot have an associated TTL")
        cookie_config = _put({}, Session=session, TTL=format_duration(ttl) if ttl else "", Path=path)
    hp.finish()
    if field and field not in _HASH_FIELDS:
        raise InvalidRequest(f'{prefix}: "{field}" is not a supported field (one of {", ".join(_HASH_FIELDS)})')
    if source_ip and field:
        raise InvalidRequest(f'{prefix}: A single hash policy cannot hash both a source address and a "{field}"')
    if source_ip and value:
        raise InvalidRequest(f"{prefix}: A FieldValue cannot be specified when hashing SourceIP")
    if field and not value:
        raise InvalidRequest(f'{prefix}: Field "{field}" was specified without a FieldValue')
    if value and not field:
        raise InvalidRequest(f"{prefix}: FieldValue requires a Field to apply to")
    if not (field or source_ip):
        raise InvalidRequest(f"{prefix}: one of Field or SourceIP is required")
    return _put({}, Field=field, FieldValue=value, CookieConfig=cookie_config, SourceIP=source_ip, Terminal=terminal)


# ---- service-splitter -------------------------------------------------------------


def parse_splitter(top: Obj, name: str) -> dict[str, Any]:
    service_ref(name, "Name")
    splits = [_split(split) for split in top.objs("Splits")]
    if not splits:
        raise InvalidRequest("no splits configured")
    seen: set[tuple[str, str]] = set()
    for split in splits:
        key = ((split.get("Service") or name).lower(), split.get("ServiceSubset", ""))
        if key in seen:
            raise InvalidRequest(f'split destination occurs more than once: service="{key[0]}", subset="{key[1]}"')
        seen.add(key)
    # Consul's arithmetic: each weight in hundredths of a percent, the sum exactly 100%
    total = sum(math.floor(split["Weight"] * 100 + 0.5) for split in splits)
    if total != 100 * 100:
        raise InvalidRequest(f"the sum of all split weights must be 100, not {total / 100:f}")
    return _put({"Splits": splits}, Meta=top.meta())


def _split(split: Obj) -> dict[str, Any]:
    weight = split.raw("Weight")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not (0 <= weight <= 100):
        raise InvalidRequest(f"{split.name('Weight')} must be a number from 0 to 100")
    # two decimals, as Consul keeps them; a whole number stays an integer in the JSON
    hundredths = math.floor(weight * 100 + 0.5)
    out: dict[str, Any] = {"Weight": hundredths // 100 if hundredths % 100 == 0 else hundredths / 100}
    service = split.str("Service")
    if service:
        out["Service"] = service_ref(service, split.name("Service"))
    _put(out, ServiceSubset=split.str("ServiceSubset"))
    split.enterprise()
    for field in ("RequestHeaders", "ResponseHeaders"):
        mods = split.obj(field)
        if mods is not None:
            _put(out, **{field: header_modifiers(mods)})
    split.finish()
    return out


# ---- service-defaults: UpstreamConfig and RateLimits ---------------------------------


def parse_upstream_config(obj: Obj) -> dict[str, Any]:
    """`UpstreamConfig {Defaults, Overrides[]}`: what the service's sidecar applies to
    the upstreams it calls, every upstream (Defaults) or one by name (Overrides)."""
    defaults = obj.obj("Defaults")
    out: dict[str, Any] = {}
    if defaults is not None:
        _put(out, Defaults=_upstream(defaults, named=False))
    overrides, names = [], set()
    for override in obj.objs("Overrides"):
        parsed = _upstream(override, named=True)
        if parsed["Name"].lower() in names:
            raise InvalidRequest(f'{override.name("Name")}: "{parsed["Name"]}" is given more than once')
        names.add(parsed["Name"].lower())
        overrides.append(parsed)
    obj.finish()
    return _put(out, Overrides=overrides)


def _upstream(obj: Obj, *, named: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    name = obj.str("Name")
    if named:
        out["Name"] = service_ref(name, obj.name("Name"))
    elif name:
        raise InvalidRequest(f"{obj.name('Name')} must be empty: the defaults apply to every upstream")
    obj.enterprise()
    obj.unsupported("Peer", "EnvoyListenerJSON", "EnvoyClusterJSON", "MeshGateway", "BalanceOutboundConnections")
    protocol = obj.str("Protocol")
    _put(out, Protocol=check_protocol(protocol, obj.name("Protocol")) if protocol else "",
         ConnectTimeoutMs=obj.int("ConnectTimeoutMs"))
    limits = obj.obj("Limits")
    if limits is not None:
        _put(out, Limits=_present_ints(limits, ("MaxConnections", "MaxPendingRequests", "MaxConcurrentRequests")))
        limits.finish()
    check = obj.obj("PassiveHealthCheck")
    if check is not None:
        _put(out, PassiveHealthCheck=_passive_health_check(check))
    obj.finish()
    return out


def _present_ints(obj: Obj, fields: tuple[str, ...], hi: int = (1 << 31) - 1) -> dict[str, int]:
    """The fields given, 0 included: Consul keeps these as pointers, an explicit 0 is a
    value (no pending requests at all) and an absent one is the proxy's default."""
    return {field: obj.int(field, hi=hi) for field in fields if obj.raw(field) is not None}


def _passive_health_check(check: Obj) -> dict[str, Any]:
    out: dict[str, Any] = {}
    interval = check.duration("Interval")
    if interval:
        out["Interval"] = format_duration(interval)
    out.update(_present_ints(check, ("MaxFailures",), hi=_UINT32))
    out.update(_present_ints(check, ("EnforcingConsecutive5xx", "MaxEjectionPercent"), hi=100))
    if check.raw("BaseEjectionTime") is not None:
        out["BaseEjectionTime"] = format_duration(check.duration("BaseEjectionTime"))
    check.finish()
    return out


def parse_rate_limits(obj: Obj) -> dict[str, Any]:
    """`RateLimits {InstanceLevel {RequestsPerSecond, RequestsMaxBurst, Routes[]}}`: the
    requests the service's own sidecar lets in, overall and per path."""
    instance = obj.obj("InstanceLevel")
    obj.finish()
    if instance is None:
        return {}
    out = _put({}, RequestsPerSecond=instance.int("RequestsPerSecond"),
               RequestsMaxBurst=instance.int("RequestsMaxBurst"))
    routes = [_rate_limit_route(route) for route in instance.objs("Routes")]
    instance.finish()
    return _put({}, InstanceLevel=_put(out, Routes=routes))


def _rate_limit_route(route: Obj) -> dict[str, Any]:
    out = path_match(route)
    if len(out) != 1:
        raise InvalidRequest(f"{route.path} should contain exactly one of PathExact, PathPrefix, or PathRegex")
    if "PathRegex" in out:
        try:
            compile_re2(out["PathRegex"])
        except RegexError as exc:
            raise InvalidRequest(f"{route.name('PathRegex')}: {exc}") from None
    rate = route.int("RequestsPerSecond")
    if rate <= 0:
        raise InvalidRequest(f"{route.name('RequestsPerSecond')} must be greater than 0")
    out["RequestsPerSecond"] = rate
    _put(out, RequestsMaxBurst=route.int("RequestsMaxBurst"))
    route.finish()
    return out
