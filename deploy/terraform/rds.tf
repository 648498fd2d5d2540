# RDS PostgreSQL 15: the event store (source of truth) and the read models.
# Multi-AZ, encrypted with the Vigil key, TLS enforced, deletion protected, 35 days of
# point-in-time recovery. The master user is for bootstrapping the roles only; Vigil
# connects as the roles of deploy/README.md ("Database roles").

resource "aws_db_subnet_group" "vigil" {
  name       = local.name
  subnet_ids = var.private_subnet_ids
}

resource "aws_db_parameter_group" "vigil" {
  name_prefix = "${local.name}-postgres${split(".", var.postgres_engine_version)[0]}-"
  family      = "postgres${split(".", var.postgres_engine_version)[0]}"

  # Refuse unencrypted connections (the pods set PGSSLMODE=verify-full as well).
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  # Surface slow statements and lock waits: the command side takes a table lock on the
  # events table for each group commit.
  parameter {
    name  = "log_min_duration_statement"
    value = "500"
  }

  parameter {
    name  = "log_lock_waits"
    value = "1"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_db_instance" "vigil" {
  identifier     = "${local.name}-postgres"
  engine         = "postgres"
  engine_version = var.postgres_engine_version # a major version: minor upgrades are automatic
  instance_class = var.postgres_instance_class

  db_name  = "vigil"
  username = "vigil_admin"
  # RDS generates the master password and keeps it in Secrets Manager.
  manage_master_user_password   = true
  master_user_secret_kms_key_id = aws_kms_key.vigil.key_id

  allocated_storage     = var.postgres_allocated_storage_gb
  max_allocated_storage = var.postgres_max_allocated_storage_gb
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.vigil.arn

  multi_az               = true
  db_subnet_group_name   = aws_db_subnet_group.vigil.name
  vpc_security_group_ids = [aws_security_group.postgres.id]
  publicly_accessible    = false
  parameter_group_name   = aws_db_parameter_group.vigil.name
  ca_cert_identifier     = "rds-ca-rsa2048-g1"

  backup_retention_period   = var.postgres_backup_retention_days
  backup_window             = "02:00-03:00"
  maintenance_window        = "sun:03:30-sun:04:30"
  copy_tags_to_snapshot     = true
  deletion_protection       = true
  skip_final_snapshot       = false
  final_snapshot_identifier = "${local.name}-postgres-final"

  auto_minor_version_upgrade  = true
  allow_major_version_upgrade = false
  apply_immediately           = false

  # IAM database authentication on as well, for people (short-lived tokens for audits and
  # break-glass access); Vigil's roles keep their passwords.
  iam_database_authentication_enabled = true

  monitoring_interval = 60
  monitoring_role_arn = aws_iam_role.rds_monitoring.arn

  performance_insights_enabled          = true
  performance_insights_kms_key_id       = aws_kms_key.vigil.arn
  performance_insights_retention_period = 7
  enabled_cloudwatch_logs_exports       = ["postgresql", "upgrade"]

  # TODO: max_connections. Each Vigil process opens up to 2 x VIGIL_DB_POOL_SIZE
  # connections plus a few of its own; size the instance (or set the parameter) for
  # (command + query replicas at their HPA maximum + workers + 1 relay) x ~20.
}

# Enhanced monitoring: RDS publishes OS metrics as this role, which can do nothing else.
data "aws_iam_policy_document" "rds_monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "rds_monitoring" {
  name               = "${local.name}-rds-monitoring"
  assume_role_policy = data.aws_iam_policy_document.rds_monitoring_assume.json
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}
