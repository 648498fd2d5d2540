# MSK: carries the events out of the store (vigil.ledger.events) and the alerts
# (vigil.alerts). At least once; consumers dedupe by notification id, so Kafka is never
# the source of truth.

resource "aws_cloudwatch_log_group" "msk" {
  name              = "/aws/msk/${local.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.vigil.arn
}

resource "aws_msk_configuration" "vigil" {
  name           = local.name
  kafka_versions = [var.kafka_version]

  # Topics are created by the chart's hook Job with replication factor 3; auto-creation
  # is off so a consumer subscribing first cannot create a topic with the wrong partition
  # count (the relay would delete and recreate it). delete.topic.enable stays true: the
  # relay relies on it when the partition count is changed on purpose.
  server_properties = <<-EOT
    auto.create.topics.enable=false
    default.replication.factor=3
    min.insync.replicas=2
    num.partitions=${var.topic_partitions}
    unclean.leader.election.enable=false
    delete.topic.enable=true
  EOT
}

resource "aws_msk_cluster" "vigil" {
  cluster_name           = local.name
  kafka_version          = var.kafka_version
  number_of_broker_nodes = var.msk_broker_count

  broker_node_group_info {
    instance_type   = var.msk_instance_type
    client_subnets  = slice(var.private_subnet_ids, 0, 3)
    security_groups = [aws_security_group.msk.id]

    storage_info {
      ebs_storage_info {
        volume_size = var.msk_volume_size_gb
      }
    }
  }

  configuration_info {
    arn      = aws_msk_configuration.vigil.arn
    revision = aws_msk_configuration.vigil.latest_revision
  }

  encryption_info {
    encryption_at_rest_kms_key_arn = aws_kms_key.vigil.arn

    encryption_in_transit {
      # TLS only, between clients and brokers and between brokers. Vigil's clients connect
      # with VIGIL_KAFKA_SECURITY_PROTOCOL=SASL_SSL, VIGIL_KAFKA_SASL_MECHANISM=SCRAM-SHA-512
      # on port 9096 (the output kafka_bootstrap_brokers_sasl_scram).
      client_broker = "TLS"
      in_cluster    = true
    }
  }

  # SASL/SCRAM, users from Secrets Manager (aws_msk_scram_secret_association below); no
  # unauthenticated client. With msk_iam_auth, IAM access control as well (port 9098):
  # Vigil signs its tokens with AWS's signer (the vigil[msk-iam] extra,
  # VIGIL_KAFKA_SASL_MECHANISM=AWS_MSK_IAM), the pods' IRSA role holding the output
  # msk_iam_client_policy_json.
  client_authentication {
    unauthenticated = false
    sasl {
      scram = true
      iam   = var.msk_iam_auth
    }
  }

  open_monitoring {
    prometheus {
      jmx_exporter {
        enabled_in_broker = true
      }
      node_exporter {
        enabled_in_broker = true
      }
    }
  }

  logging_info {
    broker_logs {
      cloudwatch_logs {
        enabled   = true
        log_group = aws_cloudwatch_log_group.msk.name
      }
    }
  }
}

# The SCRAM user Vigil's processes log in as. MSK reads it from Secrets Manager: the name
# must start with AmazonMSK_ and the secret be encrypted with a customer-managed key.
resource "random_password" "kafka_scram" {
  length  = 48
  special = false
}

resource "aws_secretsmanager_secret" "kafka_scram" {
  # checkov:skip=CKV2_AWS_57:A SCRAM password is rotated by putting a new secret value (MSK re-reads it), then restarting the Vigil pods; no rotation Lambda
  name                    = "AmazonMSK_vigil_${var.environment}"
  description             = "MSK SASL/SCRAM user of Vigil: VIGIL_KAFKA_SASL_USERNAME / VIGIL_KAFKA_SASL_PASSWORD."
  kms_key_id              = aws_kms_key.vigil.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "kafka_scram" {
  secret_id = aws_secretsmanager_secret.kafka_scram.id
  secret_string = jsonencode({
    username = "vigil"
    password = random_password.kafka_scram.result
  })

  lifecycle {
    ignore_changes = [secret_string]
  }
}

resource "aws_msk_scram_secret_association" "vigil" {
  cluster_arn     = aws_msk_cluster.vigil.arn
  secret_arn_list = [aws_secretsmanager_secret.kafka_scram.arn]

  depends_on = [aws_secretsmanager_secret_version.kafka_scram]
}

# What the Vigil pods' IRSA role needs with IAM access control, and nothing more: connect
# to this cluster; read, write, create and (the relay, when a topic has another partition
# count) delete the topics named <VIGIL_TOPIC_PREFIX>vigil.*; join the consumer groups
# named the same way.
data "aws_iam_policy_document" "msk_iam_client" {
  statement {
    sid       = "ConnectToTheVigilCluster"
    actions   = ["kafka-cluster:Connect", "kafka-cluster:DescribeCluster"]
    resources = [aws_msk_cluster.vigil.arn]
  }

  statement {
    sid = "VigilTopics"
    actions = [
      "kafka-cluster:CreateTopic",
      "kafka-cluster:DeleteTopic",
      "kafka-cluster:DescribeTopic",
      "kafka-cluster:DescribeTopicDynamicConfiguration",
      "kafka-cluster:ReadData",
      "kafka-cluster:WriteData",
    ]
    resources = ["arn:${data.aws_partition.current.partition}:kafka:${var.region}:${data.aws_caller_identity.current.account_id}:topic/${aws_msk_cluster.vigil.cluster_name}/${aws_msk_cluster.vigil.cluster_uuid}/${var.topic_prefix}vigil.*"]
  }

  statement {
    sid       = "VigilConsumerGroups"
    actions   = ["kafka-cluster:AlterGroup", "kafka-cluster:DescribeGroup"]
    resources = ["arn:${data.aws_partition.current.partition}:kafka:${var.region}:${data.aws_caller_identity.current.account_id}:group/${aws_msk_cluster.vigil.cluster_name}/${aws_msk_cluster.vigil.cluster_uuid}/${var.topic_prefix}vigil.*"]
  }
}
