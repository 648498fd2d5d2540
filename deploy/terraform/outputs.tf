output "postgres_endpoint" {
  description = "RDS host name, for VIGIL_DATABASE_URL."
  value       = aws_db_instance.vigil.address
}

output "postgres_port" {
  description = "RDS port."
  value       = aws_db_instance.vigil.port
}

output "postgres_master_user_secret_arn" {
  description = "Secrets Manager secret RDS keeps the master (bootstrap) password in."
  value       = aws_db_instance.vigil.master_user_secret[0].secret_arn
}

output "kafka_bootstrap_brokers" {
  description = "MSK SASL/SCRAM-over-TLS bootstrap brokers (port 9096): the chart's kafka.bootstrap (VIGIL_KAFKA_BOOTSTRAP), with VIGIL_KAFKA_SECURITY_PROTOCOL=SASL_SSL and VIGIL_KAFKA_SASL_MECHANISM=SCRAM-SHA-512."
  value       = aws_msk_cluster.vigil.bootstrap_brokers_sasl_scram
}

output "redis_primary_endpoint" {
  description = "ElastiCache primary endpoint (the URL with its token is in the redis secret)."
  value       = aws_elasticache_replication_group.vigil.primary_endpoint_address
}

output "secret_arns" {
  description = "Secrets Manager entries to sync into the chart's Kubernetes Secret."
  value = {
    jwt_keys      = aws_secretsmanager_secret.jwt_keys.arn
    audit_mac_key = aws_secretsmanager_secret.audit_mac_key.arn
    kafka_scram   = aws_secretsmanager_secret.kafka_scram.arn
    redis         = aws_secretsmanager_secret.redis.arn
    database_url  = aws_secretsmanager_secret.database_url.arn
    cipher_key    = aws_secretsmanager_secret.cipher_key.arn
    metrics_token = aws_secretsmanager_secret.metrics_token.arn
    signing_key   = aws_secretsmanager_secret.signing_key.arn
  }
}

output "read_secrets_policy_json" {
  description = "IAM policy for whatever syncs the secrets into Kubernetes (e.g. an IRSA role)."
  value       = data.aws_iam_policy_document.read_vigil_secrets.json
}

output "kms_key_arn" {
  description = "The key encrypting RDS, MSK, ElastiCache and the secrets."
  value       = aws_kms_key.vigil.arn
}

output "security_group_ids" {
  description = "Security groups of the data stores."
  value = {
    postgres = aws_security_group.postgres.id
    msk      = aws_security_group.msk.id
    redis    = aws_security_group.redis.id
  }
}

output "helm_values" {
  description = "Non-secret values for deploy/helm/vigil (kafka.*)."
  value = {
    kafka = {
      bootstrap       = aws_msk_cluster.vigil.bootstrap_brokers
      topicPartitions = var.topic_partitions
    }
  }
}

output "kafka_bootstrap_brokers_iam" {
  description = "MSK IAM bootstrap brokers (port 9098), with msk_iam_auth: the chart's kafka.bootstrap with VIGIL_KAFKA_SASL_MECHANISM=AWS_MSK_IAM."
  value       = var.msk_iam_auth ? aws_msk_cluster.vigil.bootstrap_brokers_sasl_iam : ""
}

output "msk_iam_client_policy_json" {
  description = "IAM policy for the Vigil pods' IRSA role with msk_iam_auth: this cluster, the <prefix>vigil.* topics and consumer groups, nothing else."
  value       = data.aws_iam_policy_document.msk_iam_client.json
}
