# MSK: carries the events out of the store (vigil.ledger.events) and the alerts
# (vigil.alerts). At least once; consumers dedupe by notification id, so Kafka is never
# the source of truth.

resource "aws_cloudwatch_log_group" "msk" {
  name              = "/aws/msk/${local.name}"
  retention_in_days = 90
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
      # TODO: "TLS" only, with SASL/IAM or mTLS client authentication, once Vigil's
      # Kafka clients take security settings (today they connect in plaintext, inside
      # the VPC, limited by the security group above). Between brokers: always TLS.
      client_broker = "TLS_PLAINTEXT"
      in_cluster    = true
    }
  }

  client_authentication {
    unauthenticated = true
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
