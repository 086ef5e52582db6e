"""Kubernetes: where a pool's endpoints come from (EndpointSlices of a Service, or pods matching a selector),
how the gateway reaches the API server, and the Lease that picks the one replica that scales."""

from __future__ import annotations

import re
from typing import Self

from pydantic import BaseModel, Field, field_validator, model_validator

from fleetgate.config.fields import STRICT, seconds
from fleetgate.config.problems import invalid

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def _k8s_name(value: str | None, rule: re.Pattern[str] = _DNS_SUBDOMAIN) -> str | None:
    if value is not None and not rule.fullmatch(value):
        raise ValueError(f"must be a Kubernetes name: lower-case letters, digits and '-' (got {value!r})")
    return value


class KubernetesDiscovery(BaseModel):
    """A pool's endpoints from Kubernetes: the ready pods behind a Service (its EndpointSlices), or the
    pods matching a label selector on a target port (the shape of the Gateway API's InferencePool)."""

    model_config = STRICT

    namespace: str = Field(default="default", description="Namespace of the Service or pods.")
    service: str | None = Field(default=None, description="Service whose EndpointSlices list the pods.")
    selector: dict[str, str] | None = Field(
        default=None, description="Pod labels (instead of service): pods matching all of them."
    )
    target_port: int | str | None = Field(
        default=None,
        description="The pods' serving port, a number or a port name (service: default the slice's first "
        "port; selector: required).",
    )
    kv_events_port: int | None = Field(
        default=None, ge=1, le=65535, description="Pod port of vLLM's KV-cache events (tcp://POD_IP:port)."
    )
    scheme: str = Field(default="http", pattern="^https?$", description="http | https.")

    _ns = field_validator("namespace")(lambda v: _k8s_name(v, _DNS_LABEL))
    _svc = field_validator("service")(lambda v: _k8s_name(v, _DNS_LABEL))

    @field_validator("target_port")
    @classmethod
    def _port(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and not 1 <= value <= 65535:
            raise ValueError(f"must be a port number 1..65535 or a port name (got {value})")
        if isinstance(value, str) and not _DNS_LABEL.fullmatch(value):
            raise ValueError(f"must be a port number or a port name (got {value!r})")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.service is None) == (self.selector is None):
            raise invalid((("service",), "give exactly one of service, selector"))
        if self.selector is not None and not self.selector:
            raise invalid((("selector",), "must name at least one label"))
        if self.selector is not None and self.target_port is None:
            raise invalid((("target_port",), "required with selector (pods have no Service port)"))
        return self

    def label_selector(self) -> str:
        """The label selector the API server filters with."""
        if self.service is not None:
            return f"kubernetes.io/service-name={self.service}"
        assert self.selector is not None
        return ",".join(f"{k}={v}" for k, v in sorted(self.selector.items()))


class DiscoveryConfig(BaseModel):
    """Endpoints that come and go at run time (instead of a fixed list)."""

    model_config = STRICT

    kubernetes: KubernetesDiscovery = Field(description="From the Kubernetes API server.")


class LeaderElectionConfig(BaseModel):
    """One gateway replica scales Deployments at a time: the holder of a coordination.k8s.io Lease."""

    model_config = STRICT

    lease_name: str = Field(default="fleetgate-leader", description="Name of the Lease.")
    namespace: str | None = Field(
        default=None, description="Its namespace (default: POD_NAMESPACE, else the pools' namespace)."
    )
    lease_duration: float = seconds(15.0, "Seconds a leader that stopped renewing still holds the Lease.")
    renew_interval: float = seconds(2.0, "Seconds between renewals (and, for the others, attempts).")
    identity: str | None = Field(
        default=None, description="This replica's name (default: POD_NAME, else host)."
    )

    _name = field_validator("lease_name")(lambda v: _k8s_name(v))

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.renew_interval >= self.lease_duration:
            raise invalid((("renew_interval",), "must be shorter than lease_duration"))
        return self


class KubernetesConfig(BaseModel):
    """How the gateway talks to the Kubernetes API server (needs the [kubernetes] extra)."""

    model_config = STRICT

    api_url: str | None = Field(
        default=None,
        description="API server URL without credentials (default: in-cluster service account, else "
        "KUBECONFIG / ~/.kube/config).",
    )
    leader_election: LeaderElectionConfig = Field(default_factory=LeaderElectionConfig)
    watch_timeout: int = Field(
        default=290, ge=1, description="Seconds the server keeps one watch open before it is renewed."
    )
    request_timeout: float = seconds(10.0, "Seconds one API call (not a watch) may take.")
    retry_max: float = seconds(5.0, "Longest pause between reconnects while the API server is down.")

    @field_validator("api_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/@]+(/\S*)?", value):
            raise ValueError(f"must be an http(s) URL without credentials (got {value!r})")
        return None if value is None else value.rstrip("/")
