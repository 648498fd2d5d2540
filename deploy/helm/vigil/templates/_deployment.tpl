{{/*
One Vigil Deployment. Call with a dict:
  root       the top context ($)
  component  command-api | query-api | relay | workers
  proc       that process's values (.Values.commandApi, ...)
  args       the `vigil` arguments, e.g. (list "api" "command")
  portName   http | metrics
  port       the container port
  probes     api | metrics
  replicas   a number, or "" to leave it to the HorizontalPodAutoscaler
  strategy   the Deployment strategy (a dict)
*/}}
{{- define "vigil.deployment" -}}
{{- $root := .root -}}
{{- $ctx := dict "root" $root "component" .component -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "vigil.componentName" $ctx }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "vigil.componentLabels" $ctx | nindent 4 }}
  annotations:
    {{- include "vigil.checkovSkips" $root | nindent 4 }}
spec:
  {{- if ne (toString .replicas) "" }}
  replicas: {{ .replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    {{- toYaml .strategy | nindent 4 }}
  selector:
    matchLabels:
      {{- include "vigil.componentSelectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "vigil.componentLabels" $ctx | nindent 8 }}
        {{- with $root.Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- include "vigil.podAnnotations" $root | nindent 8 }}
    spec:
      serviceAccountName: {{ include "vigil.serviceAccountName" $root }}
      automountServiceAccountToken: {{ $root.Values.automountServiceAccountToken }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ .proc.terminationGracePeriodSeconds }}
      {{- with (include "vigil.scheduling" $ctx | trim) }}
      {{- . | nindent 6 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "vigil.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            {{- toYaml .args | nindent 12 }}
          ports:
            - name: {{ .portName }}
              containerPort: {{ .port }}
              protocol: TCP
          envFrom:
            {{- include "vigil.envFrom" $root | nindent 12 }}
          {{- with .proc.extraEnv }}
          env:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- if eq .probes "api" }}
          {{- include "vigil.apiProbes" $root | nindent 10 }}
          lifecycle:
            # Keep serving while the endpoint removal reaches every load balancer and
            # kube-proxy, then SIGTERM: uvicorn drains in-flight requests (10 s).
            preStop:
              exec:
                command: ["sleep", "5"]
          {{- else }}
          {{- include "vigil.metricsProbes" $root | nindent 10 }}
          {{- end }}
          resources:
            {{- toYaml .proc.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            {{- include "vigil.volumeMounts" $root | nindent 12 }}
      volumes:
        {{- include "vigil.volumes" $root | nindent 8 }}
{{- end }}
