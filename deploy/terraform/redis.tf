# ElastiCache Redis: a cache only (command replies, hot accounts). Correctness never
# depends on it, so no snapshots; it is still encrypted, in transit with TLS and an auth
# token (VIGIL_REDIS_URL=rediss://:<token>@<primary endpoint>:6379/0).

resource "aws_elasticache_subnet_group" "vigil" {
  name       = local.name
  subnet_ids = var.private_subnet_ids
}

resource "random_password" "redis_auth_token" {
  length  = 64
  special = false # ElastiCache refuses some symbols; 64 alphanumerics are plenty
}

resource "aws_elasticache_replication_group" "vigil" {
  replication_group_id = "${local.name}-redis"
  description          = "Vigil reply and account cache (not a source of truth)"

  engine               = "redis"
  engine_version       = var.redis_engine_version
  node_type            = var.redis_node_type
  parameter_group_name = "default.redis${split(".", var.redis_engine_version)[0]}"
  port                 = 6379

  num_cache_clusters         = 1 + var.redis_replicas
  automatic_failover_enabled = true # redis_replicas is at least 1
  multi_az_enabled           = true

  subnet_group_name  = aws_elasticache_subnet_group.vigil.name
  security_group_ids = [aws_security_group.redis.id]

  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.vigil.arn
  transit_encryption_enabled = true
  auth_token                 = random_password.redis_auth_token.result

  snapshot_retention_limit   = 0
  auto_minor_version_upgrade = true
  apply_immediately          = false
}
