# Vigil on AWS: a skeleton for the platform team to finish.
#
# Creates: a KMS key, RDS PostgreSQL 15, an MSK cluster, ElastiCache Redis, Secrets
# Manager entries, and the security groups between the Vigil pods and those stores.
# Does not create: the VPC, the subnets, the EKS cluster (read below as a data source),
# the PostgreSQL roles (SQL, see deploy/README.md), the Kafka topics (the chart's hook
# Job), the Kubernetes Secret (External Secrets / CSI driver, or kubectl).
#
# Still to decide before production (search for "TODO"): state backend, KMS key policy,
# RDS Proxy (not with the relay: it needs session advisory locks and LISTEN/NOTIFY),
# MSK client authentication (Vigil's Kafka clients have no TLS/SASL settings yet).

data "aws_eks_cluster" "this" {
  name = var.eks_cluster_name
}

locals {
  name = "vigil-${var.environment}"

  # Who may reach the data stores: the pods' security groups, or by default the EKS
  # cluster security group (attached to managed node groups' nodes).
  client_security_group_ids = toset(
    length(var.client_security_group_ids) > 0
    ? var.client_security_group_ids
    : [data.aws_eks_cluster.this.vpc_config[0].cluster_security_group_id]
  )
}

# One customer-managed key for every store and secret of Vigil.
# TODO: a key policy naming the admin and usage roles (the default policy delegates
# everything to the account's IAM policies).
resource "aws_kms_key" "vigil" {
  description             = "Vigil ${var.environment}: RDS, MSK, ElastiCache, Secrets Manager"
  enable_key_rotation     = true
  deletion_window_in_days = 30
}

resource "aws_kms_alias" "vigil" {
  name          = "alias/${local.name}"
  target_key_id = aws_kms_key.vigil.key_id
}

# --- Security groups: only the Vigil pods get in, only on the store's port -------------
# No egress rules: the stores never open connections. Terraform removes AWS's default
# allow-all egress rule from groups it creates.

resource "aws_security_group" "postgres" {
  name        = "${local.name}-postgres"
  description = "Vigil RDS PostgreSQL: from the Vigil pods only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "postgres" {
  for_each                     = local.client_security_group_ids
  security_group_id            = aws_security_group.postgres.id
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  description                  = "PostgreSQL from Vigil"
}

resource "aws_security_group" "msk" {
  name        = "${local.name}-msk"
  description = "Vigil MSK: from the Vigil pods only"
  vpc_id      = var.vpc_id
}

# 9096: SASL/SCRAM over TLS, the only way in (the cluster serves no plaintext listener).
resource "aws_vpc_security_group_ingress_rule" "msk" {
  for_each = {
    for pair in setproduct(tolist(local.client_security_group_ids), [9096]) :
    "${pair[0]}-${pair[1]}" => { security_group = pair[0], port = pair[1] }
  }
  security_group_id            = aws_security_group.msk.id
  referenced_security_group_id = each.value.security_group
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  description                  = "Kafka from Vigil"
}

resource "aws_security_group" "redis" {
  name        = "${local.name}-redis"
  description = "Vigil ElastiCache Redis: from the Vigil pods only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "redis" {
  for_each                     = local.client_security_group_ids
  security_group_id            = aws_security_group.redis.id
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  description                  = "Redis from Vigil"
}
