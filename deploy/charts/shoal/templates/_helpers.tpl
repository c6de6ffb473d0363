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
{{- $urls = append $urls (printf "http://%s-%d.%s-headless.%s.svc:%v" $name $i $name $.Release.Namespace $.Values.scheduler.port) -}}
{{- end -}}
{{ join "," $urls }}
{{- end -}}

{{- define "shoal.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}
