{{/* Operations helpers: log format, monitoring. */}}

{{/* The env block that picks the log format of a Shoal container (logFormat: text|json). */}}
{{- define "shoal.logEnv" -}}
env:
  - name: SHOAL_LOG_FORMAT
    value: {{ .Values.logFormat | default "text" | quote }}
{{- end -}}
