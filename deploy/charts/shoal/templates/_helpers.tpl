{{/* Names, labels and the registry list shared by every template. */}}

{{- define "shoal.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shoal.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "shoal.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shoal
{{- end -}}

{{/* Selector labels of one component: include with (list $ "agent"). */}}
{{- define "shoal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shoal.name" (index . 0) }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Labels of Shoal's own Pods: never rewritten by its webhook (no chicken-and-egg pulls). */}}
{{- define "shoal.podLabels" -}}
{{ include "shoal.selectorLabels" . }}
shoal.io/skip-injection: "true"
{{- end -}}

{{- define "shoal.image" -}}
{{ printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end -}}

{{- define "shoal.sourceMode" -}}
{{- if eq (toString .Values.p2p.plusMode.downloadPattern) "source" -}}true{{- end -}}
{{- end -}}

{{/*
The registries as JSON {"items": [{"host", "url"}]}, from either the list form or the
comma-separated string form. Fails with a clear message when none is configured.
*/}}
{{- define "shoal.registries" -}}
{{- $items := list -}}
{{- if kindIs "string" .Values.registries -}}
{{- range splitList "," .Values.registries -}}
{{- if trim . -}}
{{- $items = append $items (dict "host" (trim .) "url" "") -}}
{{- end -}}
{{- end -}}
{{- else -}}
{{- range .Values.registries -}}
{{- $items = append $items (dict "host" .host "url" (default "" .url)) -}}
{{- end -}}
{{- end -}}
{{- if not $items -}}
{{- fail "registries is required: set at least one registry to accelerate, e.g. --set registries=registry.example.com" -}}
{{- end -}}
{{- dict "items" $items | toJson -}}
{{- end -}}

{{- define "shoal.p2pNodeSelector" -}}
{{- if .Values.p2p.plusMode.nodeSelectorEnable }}
{{ printf "%s/p2p-plus-node" .Values.labelPrefix }}: "true"
{{- end }}
{{- end -}}

{{/* Every scheduler replica, comma-separated (the agent's --scheduler takes a list). */}}
{{- define "shoal.schedulerURL" -}}
{{- $name := printf "%s-scheduler" (include "shoal.fullname" .) -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.scheduler.replicas) -}}
{{- $urls = append $urls (printf "%s://%s-%d.%s-headless.%s.svc:%v" (ternary "https" "http" $.Values.tls.enabled) $name $i $name $.Release.Namespace $.Values.scheduler.port) -}}
{{- end -}}
{{ join "," $urls }}
{{- end -}}

{{/* The Secret holding the node CA (tls.crt, tls.key). */}}
{{- define "shoal.caSecretName" -}}
{{- .Values.tls.ca.existingSecret | default (printf "%s-ca" (include "shoal.fullname" .)) -}}
{{- end -}}

{{/* Names the scheduler's certificate holds: its Service and every replica (wildcard). */}}
{{- define "shoal.schedulerTlsNames" -}}
{{- $name := printf "%s-scheduler" (include "shoal.fullname" .) -}}
{{- $ns := .Release.Namespace -}}
{{- list $name (printf "%s.%s.svc" $name $ns) (printf "%s.%s.svc.cluster.local" $name $ns) (printf "*.%s-headless.%s.svc" $name $ns) (printf "*.%s-headless.%s.svc.cluster.local" $name $ns) | toJson -}}
{{- end -}}

{{- define "shoal.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* "true" when the webhook rewrites images (mode: rewrite); mirror mode has no webhook. */}}
{{- define "shoal.rewriteMode" -}}
{{- if eq (toString .Values.mode) "rewrite" -}}true{{- end -}}
{{- end -}}

{{- define "shoal.nodeConfigMode" -}}
{{- if include "shoal.rewriteMode" . -}}rewrite{{- else -}}mirror{{- end -}}
{{- end -}}

{{/* The agent's PriorityClass: the chart's own unless one is named (system-node-critical is refused outside kube-system on GKE). */}}
{{- define "shoal.agentPriorityClassName" -}}
{{- if .Values.agent.priorityClassName -}}
{{- .Values.agent.priorityClassName -}}
{{- else if .Values.priorityClass.create -}}
{{- printf "%s-node" (include "shoal.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
The node-config container: writes the runtime's mirror config on the node (hostPath), agent
first, the registry as fallback. Run as root (host files under /etc), no capabilities.
*/}}
{{- define "shoal.nodeConfigContainer" -}}
{{- $registries := (include "shoal.registries" . | fromJson).items -}}
{{- $nc := .Values.nodeConfig -}}
- name: node-config
  image: {{ include "shoal.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - node-config
    - --mode
    - {{ include "shoal.nodeConfigMode" . }}
    - --agent
    - "127.0.0.1:{{ int .Values.p2p.port }}"
    {{- with .Values.aliasDomain }}
    - --alias-domain
    - {{ . | quote }}
    {{- end }}
    {{- range $registries }}
    - --registry
    - {{ if .url }}{{ printf "%s=%s" .host .url | quote }}{{ else }}{{ .host | quote }}{{ end }}
    {{- end }}
    {{- /* paths as the node sees them (containerd's config_path names those); the node's
    directories are mounted under /host */}}
    - --host-root
    - /host
    - --containerd-certs-dir
    - {{ if $nc.containerdCertsDir }}{{ $nc.containerdCertsDir | quote }}{{ else }}""{{ end }}
    - --containerd-config
    - {{ $nc.containerdConfig | quote }}
    - --registries-conf-dir
    - {{ if $nc.registriesConfDir }}{{ $nc.registriesConfDir | quote }}{{ else }}""{{ end }}
    {{- if include "shoal.requireConfigPath" . }}
    - --require-config-path
    {{- end }}
  resources:
    {{- toYaml $nc.resources | nindent 4 }}
  securityContext:
    runAsUser: 0
    runAsNonRoot: false
    {{- include "shoal.securityContext" . | nindent 4 }}
  volumeMounts:
    {{- if $nc.containerdCertsDir }}
    - name: containerd-config
      mountPath: {{ printf "/host%s" (dir $nc.containerdConfig) }}
      readOnly: true
    - name: containerd-certs
      mountPath: {{ printf "/host%s" $nc.containerdCertsDir }}
    {{- end }}
    {{- if $nc.registriesConfDir }}
    - name: registries-conf
      mountPath: {{ printf "/host%s" $nc.registriesConfDir }}
    {{- end }}
{{- end -}}

{{- define "shoal.nodeConfigVolumes" -}}
{{- $nc := .Values.nodeConfig -}}
{{- if $nc.containerdCertsDir }}
- name: containerd-config
  hostPath:
    path: {{ dir $nc.containerdConfig }}
    type: DirectoryOrCreate
- name: containerd-certs
  hostPath:
    path: {{ $nc.containerdCertsDir }}
    type: DirectoryOrCreate
{{- end }}
{{- if $nc.registriesConfDir }}
- name: registries-conf
  hostPath:
    path: {{ $nc.registriesConfDir }}
    type: DirectoryOrCreate
{{- end }}
{{- end -}}

{{/* emptyDir cache bound: agent.cacheSizeLimit, else 1.25 x p2p.plusMode.cacheMaxSize (powers of 1024, as the agent reads it). */}}
{{- define "shoal.cacheSizeLimit" -}}
{{- if .Values.agent.cacheSizeLimit -}}
{{- .Values.agent.cacheSizeLimit -}}
{{- else -}}
{{- $size := toString .Values.p2p.plusMode.cacheMaxSize -}}
{{- $number := regexReplaceAll "^([0-9.]+).*$" $size "${1}" | float64 -}}
{{- $unit := regexReplaceAll "^[0-9.]+([KkMmGgTt]?).*$" $size "${1}" | upper -}}
{{- printf "%d%s" (mulf $number 1.25 | ceil | int64) (ternary (printf "%si" $unit) "" (ne $unit "")) -}}
{{- end -}}
{{- end -}}

{{- define "shoal.startupTaintKey" -}}
{{- default (printf "%s/agent-not-ready" .Values.labelPrefix) .Values.startupTaint.key -}}
{{- end -}}

{{/* nodeConfig.requireConfigPath: true/false as given; empty: true in rewrite mode. */}}
{{- define "shoal.requireConfigPath" -}}
{{- $value := .Values.nodeConfig.requireConfigPath -}}
{{- if kindIs "bool" $value -}}
{{- if $value -}}true{{- end -}}
{{- else if include "shoal.rewriteMode" . -}}true{{- end -}}
{{- end -}}
