# Vigil on AWS: a skeleton for the platform team to finish.
#
# Creates: a KMS key, RDS PostgreSQL 15, an MSK cluster, ElastiCache Redis, Secrets
# Manager entries, and the security groups between the Vigil pods and those stores.
# Does not create: the VPC, the subnets, the EKS cluster (read below as a data source),
# the PostgreSQL roles (SQL, see deploy/README.md), the Kafka topics (the chart's hook
# Job), the Kubernetes Secret (External Secrets / CSI driver, or kubectl).
#
# Still to decide before production (search for "TODO"): the state backend, RDS Proxy
# (not with the relay: it needs session advisory locks and LISTEN/NOTIFY) and
# max_connections. `make deploy-check` runs checkov over this directory: every check it
# fails on purpose is skipped inline, where it applies, with its reason.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

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

# One customer-managed key for every store and secret of Vigil, rotated yearly by KMS.
resource "aws_kms_key" "vigil" {
  description             = "Vigil ${var.environment}: RDS, MSK, ElastiCache, Secrets Manager, logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

# The key policy. The account's IAM policies decide who administers and uses the key (the
# key's own default), and AWS services use it on a caller's behalf through grants (RDS,
# MSK, ElastiCache, Secrets Manager). CloudWatch Logs, which has no caller, may use it only
# for the MSK broker log group.
data "aws_iam_policy_document" "kms" {
  # checkov:skip=CKV_AWS_109:The key's default statement: IAM policies in the account decide, and only for this key (a key policy's resource "*" is the key itself)
  # checkov:skip=CKV_AWS_111:The key's default statement, as above
  # checkov:skip=CKV_AWS_356:A key policy's resource "*" means this key only
  statement {
    sid       = "AccountIamPoliciesDecide"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsForTheMskLogGroup"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${data.aws_partition.current.partition}:logs:${var.region}:${data.aws_caller_identity.current.account_id}:log-group:/aws/msk/${local.name}"]
    }
  }
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
