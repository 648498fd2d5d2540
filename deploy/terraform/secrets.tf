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

# VIGIL_CIPHER_KEY: encrypts every event's state at rest (production refuses to start
# without it). Never delete: stored events need it, whichever key is current.
resource "random_bytes" "cipher_key" {
  length = 32

  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_secretsmanager_secret" "cipher_key" {
  # checkov:skip=CKV2_AWS_57:Rotated by hand, as deploy/README.md says (a new kid in VIGIL_CIPHER_KEYS beside the old ones); a rotation Lambda cannot know Vigil's key rings
  name                    = "vigil/${var.environment}/cipher-key"
  description             = "VIGIL_CIPHER_KEY: AES key (base64) of the event state at rest. Keep every old key; never delete."
  kms_key_id              = aws_kms_key.vigil.arn
  recovery_window_in_days = 30

  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_secretsmanager_secret_version" "cipher_key" {
  secret_id     = aws_secretsmanager_secret.cipher_key.id
  secret_string = random_bytes.cipher_key.base64

  lifecycle {
    ignore_changes = [secret_string]
  }
}

# VIGIL_METRICS_TOKEN: the bearer of the APIs' /metrics (the ServiceMonitor reads it).
resource "random_password" "metrics_token" {
  length  = 64
  special = false
}

resource "aws_secretsmanager_secret" "metrics_token" {
  # checkov:skip=CKV2_AWS_57:Rotated by hand: put a new value, restart the pods and the scrapers together
  name                    = "vigil/${var.environment}/metrics-token"
  description             = "VIGIL_METRICS_TOKEN: bearer token of the APIs' /metrics."
  kms_key_id              = aws_kms_key.vigil.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "metrics_token" {
  secret_id     = aws_secretsmanager_secret.metrics_token.id
  secret_string = random_password.metrics_token.result

  lifecycle {
    ignore_changes = [secret_string]
  }
}

# The Ed25519 signing key (VIGIL_SIGNING_KEY_FILE) is made by `vigil keys generate`, not
# here, so that it never sits in the Terraform state: put it with
#   aws secretsmanager put-secret-value --secret-id vigil/<env>/signing-key --secret-string file://signing-key.pem
resource "aws_secretsmanager_secret" "signing_key" {
  # checkov:skip=CKV2_AWS_57:Rotated by hand: a new key signs, the old public half stays for verifying (deploy/README.md)
  name                    = "vigil/${var.environment}/signing-key"
  description             = "The Ed25519 key (PEM) that signs checkpoints and export manifests; mounted as a file."
  kms_key_id              = aws_kms_key.vigil.arn
  recovery_window_in_days = 30
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
      aws_secretsmanager_secret.cipher_key.arn,
      aws_secretsmanager_secret.metrics_token.arn,
      aws_secretsmanager_secret.signing_key.arn,
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
