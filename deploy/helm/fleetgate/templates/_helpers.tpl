{{/* Names. */}}
{{- define "fleetgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fleetgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fleetgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "fleetgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "fleetgate.gatewaySelector" -}}
app.kubernetes.io/name: {{ include "fleetgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{/* A pool's vLLM objects: <fullname>-vllm-<pool>. Call with (dict "root" $ "pool" $pool). */}}
{{- define "fleetgate.poolName" -}}
{{- printf "%s-vllm-%s" (include "fleetgate.fullname" .root) .pool.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fleetgate.poolSelector" -}}
app.kubernetes.io/name: {{ include "fleetgate.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: vllm
fleetgate.dev/pool: {{ .pool.name | quote }}
{{- end }}

{{- define "fleetgate.hfSecretName" -}}
{{- if .Values.hfToken.secretName }}{{ .Values.hfToken.secretName }}{{ else }}{{ include "fleetgate.fullname" . }}-hf-token{{ end }}
{{- end }}

{{- define "fleetgate.keysSecretName" -}}
{{- if .Values.gateway.keysSecret }}{{ .Values.gateway.keysSecret }}{{ else }}{{ include "fleetgate.fullname" . }}-keys{{ end }}
{{- end }}

{{- define "fleetgate.leaseName" -}}
{{- default (printf "%s-leader" (include "fleetgate.fullname" .)) .Values.gateway.leaderElection.leaseName }}
{{- end }}

{{/*
The GKE guide's drain arithmetic (vLLM gpu-deployment.yaml): the longest request is max_model_len output tokens
at the slowest per-stream decode rate, plus a share for prompt tokens computed meanwhile; add the preStop sleep;
multiply by a safety factor. 4096 tokens at 100 tok/s: 41 s x 1.4 = 57 s, + 30 s = 87 s, x 1.5 = 131 s.
*/}}
{{- define "fleetgate.poolDrainSeconds" -}}
{{- $d := .pool.drain }}
{{- ceil (mulf (divf .pool.vllmConfig.maxModelLen $d.outputTokensPerSecond) (addf 1 $d.promptOverhead)) | int }}
{{- end }}

{{- define "fleetgate.poolGraceSeconds" -}}
{{- $d := .pool.drain }}
{{- if $d.terminationGracePeriodSeconds }}
{{- $d.terminationGracePeriodSeconds | int }}
{{- else }}
{{- ceil (mulf (addf (include "fleetgate.poolDrainSeconds" . | float64) $d.preStopSeconds) $d.safetyFactor) | int }}
{{- end }}
{{- end }}

{{/* The gateway: preStop sleep, then pre_stop_delay serving with /ready failing, then the drain, + 10 s. */}}
{{- define "fleetgate.gatewayGraceSeconds" -}}
{{- $s := .Values.gateway.shutdown }}
{{- ceil (addf (mulf $s.preStopDelay 2) $s.drainTimeout 10) | int }}
{{- end }}

{{/* The model argument: a hub id, or a path inside the PVC. */}}
{{- define "fleetgate.poolModel" -}}
{{- if and .pool.modelPVC.claimName (not (hasPrefix "/" .pool.modelURL)) }}
{{- printf "%s/%s" (trimSuffix "/" .pool.modelPVC.mountPath) .pool.modelURL }}
{{- else }}
{{- .pool.modelURL }}
{{- end }}
{{- end }}

{{- define "fleetgate.servedName" -}}
{{- default .pool.modelURL .pool.servedModelName }}
{{- end }}

{{/*
The fleet file (docs/fleet-file.md). Pools find their pods through the headless Service's EndpointSlices;
scaler fleetgate adds workers.provider kubernetes on the pool's Deployment.
*/}}
{{- define "fleetgate.fleetFile" -}}
{{- $root := . }}
{{- $g := .Values.gateway }}
{{- $fleet := dict
  "listen" (dict "host" "0.0.0.0" "port" ($g.port | int))
  "admin" (dict "host" "0.0.0.0" "port" ($g.adminPort | int))
  "shutdown" (dict "pre_stop_delay" $g.shutdown.preStopDelay "drain_timeout" $g.shutdown.drainTimeout)
  "log" $g.log
  "kubernetes" (dict "leader_election" (dict "lease_name" (include "fleetgate.leaseName" .) "namespace" .Release.Namespace))
}}
{{- if $g.keys }}
{{- $keys := list }}
{{- range $g.keys }}
{{- $keys = append $keys (dict "name" .name "key_file" (printf "/etc/fleetgate-keys/%s" .name) "priority" (default 0 .priority | int)) }}
{{- end }}
{{- $_ := set $fleet "keys" $keys }}
{{- end }}
{{- $pools := list }}
{{- range (include "fleetgate.pools" $root | fromYaml).pools }}
{{- $ctx := dict "root" $root "pool" . }}
{{- $served := include "fleetgate.servedName" $ctx }}
{{- $models := list $served }}
{{- range .aliases }}
{{- $models = append $models (dict "alias" . "target" $served) }}
{{- end }}
{{- $k8s := dict "namespace" $root.Release.Namespace "service" (include "fleetgate.poolName" $ctx) "target_port" "http" }}
{{- if .kvEvents.enabled }}
{{- $_ := set $k8s "kv_events_port" (.kvEvents.port | int) }}
{{- end }}
{{- $pool := dict "name" .name "models" $models "discovery" (dict "kubernetes" $k8s) }}
{{- if .lora.adapters }}
{{- $adapters := list }}
{{- range .lora.adapters }}
{{- $adapters = append $adapters (dict "name" .name "path" .path) }}
{{- end }}
{{- $_ := set $pool "adapters" $adapters }}
{{- end }}
{{- if eq .scaler "fleetgate" }}
{{- $w := dict
  "provider" "kubernetes"
  "deployment" (include "fleetgate.poolName" $ctx)
  "namespace" $root.Release.Namespace
  "served_model_name" $served
  "min_workers" (.minReplicas | int)
  "max_workers" (.maxReplicas | int)
  "startup_timeout" .probes.startupBudgetSeconds
  "drain_deadline" (include "fleetgate.poolDrainSeconds" $ctx | int)
}}
{{- if .sleep }}
{{- $_ := set $w "sleep" true }}
{{- end }}
{{- $_ := set $pool "workers" $w }}
{{- else if eq .scaler "keda" }}
{{- /* No worker of its own to hold for: a request at zero pods waits in the queue while KEDA starts one. */}}
{{- $_ := set $pool "limits" (dict "max_queue_wait" .probes.startupBudgetSeconds) }}
{{- end }}
{{- $pools = append $pools (mergeOverwrite $pool (deepCopy .fleet)) }}
{{- end }}
{{- $_ := set $fleet "pools" $pools }}
{{- toYaml (mergeOverwrite $fleet (deepCopy $g.fleet)) }}
{{- end }}

{{/* What the schema cannot say: rules across values, failing the install with the value's name. */}}
{{- define "fleetgate.checks" -}}
{{- $names := dict }}
{{- $models := dict }}
{{- range $i, $p := (include "fleetgate.pools" . | fromYaml).pools }}
{{- if hasKey $names $p.name }}
{{- fail (printf "pools[%d].name: %q repeats an earlier pool" $i $p.name) }}
{{- end }}
{{- $_ := set $names $p.name true }}
{{- $served := default $p.modelURL $p.servedModelName }}
{{- range (prepend (default list $p.aliases) $served) }}
{{- if hasKey $models . }}
{{- fail (printf "pools[%d]: model name %q is served by an earlier pool too; a name may be served by one pool only" $i .) }}
{{- end }}
{{- $_ := set $models . true }}
{{- end }}
{{- if gt ($p.minReplicas | int) ($p.maxReplicas | int) }}
{{- fail (printf "pools[%d].minReplicas (%d) must not exceed maxReplicas (%d)" $i ($p.minReplicas | int) ($p.maxReplicas | int)) }}
{{- end }}
{{- if and (eq $p.scaler "fleetgate") $p.sleep (not $p.requestGPU) }}
{{- fail (printf "pools[%d].sleep: vLLM sleep mode needs a GPU (requestGPU)" $i) }}
{{- end }}
{{- if and $p.sleep (ne $p.scaler "fleetgate") }}
{{- fail (printf "pools[%d].sleep: only scaler fleetgate sleeps pods (scaler is %s)" $i $p.scaler) }}
{{- end }}
{{- end }}
{{- if eq (.Values.gateway.port | int) (.Values.gateway.adminPort | int) }}
{{- fail (printf "gateway.adminPort must differ from gateway.port (both %d): /metrics and /admin are never served to tenants" (.Values.gateway.port | int)) }}
{{- end }}
{{- range $i, $k := .Values.gateway.keys }}
{{- if and (not $k.value) (not $.Values.gateway.keysSecret) }}
{{- fail (printf "gateway.keys[%d] (%s): give its value, or gateway.keysSecret holding it" $i $k.name) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The pools, each merged over poolDefaults: (include "fleetgate.pools" . | fromYaml).pools */}}
{{- define "fleetgate.pools" -}}
{{- $out := list }}
{{- range .Values.pools }}
{{- $out = append $out (mergeOverwrite (deepCopy $.Values.poolDefaults) (deepCopy .)) }}
{{- end }}
{{- dict "pools" $out | toYaml }}
{{- end }}
