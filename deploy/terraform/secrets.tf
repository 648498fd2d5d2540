# Secrets Manager entries for Vigil's secrets, encrypted with the Vigil key. Something
# (External Secrets Operator, the Secrets Store CSI driver, or a release script) copies
# them into the Kubernetes Secret the chart reads (secrets.existingSecret):
#
#   vigil/<env>/jwt-keys        -> VIGIL_JWT_KEYS      {"<kid>": "<key>"}
#   vigil/<env>/audit-mac-key   -> VIGIL_AUDIT_MAC_KEY
#   vigil/<env>/redis           -> VIGIL_REDIS_URL     (its "url" field)
#   vigil/<env>/database-url    -> VIGIL_DATABASE_URL  (the service role's URL; set by hand)
#
# Generated values land in the Terraform state: keep the state encrypted and restricted,
# or create the values outside Terraform and import only the secret containers.
# Every secret_string ignores later changes, so rotations done outside Terraform stick.

resource "random_password" "jwt_key" {
  length  = 64
  special = false
}

resource "random_password" "audit_mac_key" {
  length  = 64
  special = false

  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_secretsmanager_secret" "jwt_keys" {
  # checkov:skip=CKV2_AWS_57:Rotated by hand, as deploy/README.md says (new key beside the old, then restart); a rotation Lambda cannot know Vigil's key rings
  name                    = "vigil/${var.environment}/jwt-keys"
  description             = "VIGIL_JWT_KEYS: JSON {kid: HS256 key}; VIGIL_JWT_KID names the signing one. Rotate by adding a key (deploy/README.md)."
  kms_key_id              = aws_kms_key.vigil.arn
  recovery_window_in_days = 30
}

resource "aws_secretsmanager_secret_version" "jwt_keys" {
  secret_id     = aws_secretsmanager_secret.jwt_keys.id
  secret_string = jsonencode({ (var.jwt_kid) = random_password.jwt_key.result })

  lifecycle {
    ignore_changes = [secret_string]
  }
}

# The key of every event's MAC. Losing it makes every stored MAC unverifiable, and a
# new key only covers new events: never delete it, rotate only with a re-MAC plan.
resource "aws_secretsmanager_secret" "audit_mac_key" {
  # checkov:skip=CKV2_AWS_57:Rotated by hand, as deploy/README.md says (new key beside the old, then restart); a rotation Lambda cannot know Vigil's key rings
  name                    = "vigil/${var.environment}/audit-mac-key"
  description             = "VIGIL_AUDIT_MAC_KEY: HMAC key of each event's mac. Keep outside the database; never delete."
  kms_key_id              = aws_kms_key.vigil.arn
  recovery_window_in_days = 30

  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_secretsmanager_secret_version" "audit_mac_key" {
  secret_id     = aws_secretsmanager_secret.audit_mac_key.id
  secret_string = random_password.audit_mac_key.result

  lifecycle {
    ignore_changes = [secret_string]
  }
}

resource "aws_secretsmanager_secret" "redis" {
  # checkov:skip=CKV2_AWS_57:Rotated by hand, as deploy/README.md says (new key beside the old, then restart); a rotation Lambda cannot know Vigil's key rings
  name                    = "vigil/${var.environment}/redis"
  description             = "ElastiCache auth token and VIGIL_REDIS_URL (rediss://)."
  kms_key_id              = aws_kms_key.vigil.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "redis" {
  secret_id = aws_secretsmanager_secret.redis.id
  secret_string = jsonencode({
    auth_token = random_password.redis_auth_token.result
    url        = "rediss://:${random_password.redis_auth_token.result}@${aws_elasticache_replication_group.vigil.primary_endpoint_address}:6379/0"
  })

  lifecycle {
    ignore_changes = [secret_string]
  }
}

# Only the container: its value is the service role's URL,
# postgresql://vigil_app:<password>@<rds endpoint>:5432/vigil, written once the roles
# exist (deploy/README.md, "Database roles"):
#   aws secretsmanager put-secret-value --secret-id vigil/<env>/database-url --secret-string '...'
resource "aws_secretsmanager_secret" "database_url" {
  # checkov:skip=CKV2_AWS_57:Rotated by hand, as deploy/README.md says (new key beside the old, then restart); a rotation Lambda cannot know Vigil's key rings
  name                    = "vigil/${var.environment}/database-url"
  description             = "VIGIL_DATABASE_URL of the Vigil service role (not the RDS master user)."
  kms_key_id              = aws_kms_key.vigil.arn
  recovery_window_in_days = 7
}

# What the reader of these secrets (e.g. External Secrets Operator's IRSA role) needs.
data "aws_iam_policy_document" "read_vigil_secrets" {
  statement {
    sid     = "ReadVigilSecrets"
    actions = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = [
      aws_secretsmanager_secret.jwt_keys.arn,
      aws_secretsmanager_secret.audit_mac_key.arn,
      aws_secretsmanager_secret.redis.arn,
      aws_secretsmanager_secret.database_url.arn,
      aws_secretsmanager_secret.kafka_scram.arn,
    ]
  }

  # Only to read these secrets through Secrets Manager, not to decrypt anything else.
  statement {
    sid       = "DecryptWithVigilKey"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.vigil.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${var.region}.amazonaws.com"]
    }
  }
}
