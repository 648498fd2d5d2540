variable "region" {
  description = "AWS region, e.g. eu-west-2."
  type        = string
}

variable "environment" {
  description = "Environment name, used in resource names (e.g. production, staging)."
  type        = string
  default     = "production"
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}

# --- Network and EKS (existing: this module does not create them) -----------------------

variable "vpc_id" {
  description = "VPC of the EKS cluster; the data stores go in its private subnets."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets in at least three AZs, for RDS, MSK (one broker per subnet) and ElastiCache."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 3
    error_message = "Give at least three private subnets (three AZs)."
  }
}

variable "eks_cluster_name" {
  description = "Name of the existing EKS cluster that runs Vigil (read as a data source)."
  type        = string
}

variable "client_security_group_ids" {
  description = <<-EOT
    Security groups of the Vigil pods, allowed into PostgreSQL, Kafka and Redis. Empty: the
    EKS cluster security group (what managed node groups' nodes carry by default). With
    security groups for pods, give the pods' group here instead.
  EOT
  type        = list(string)
  default     = []
}

# --- PostgreSQL (RDS) ---------------------------------------------------------------------

variable "postgres_engine_version" {
  description = "RDS PostgreSQL version. Vigil uses no SQL newer than 15."
  type        = string
  default     = "15"
}

variable "postgres_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.r6g.large"
}

variable "postgres_allocated_storage_gb" {
  description = "Initial storage; grows automatically up to postgres_max_allocated_storage_gb."
  type        = number
  default     = 100
}

variable "postgres_max_allocated_storage_gb" {
  description = "Storage autoscaling ceiling."
  type        = number
  default     = 1000
}

variable "postgres_backup_retention_days" {
  description = "Automated backups and point-in-time recovery window (days, at most 35)."
  type        = number
  default     = 35
}

# --- Kafka (MSK) --------------------------------------------------------------------------

variable "kafka_version" {
  description = "MSK Kafka version."
  type        = string
  default     = "3.6.0"
}

variable "msk_iam_auth" {
  description = "Also enable MSK IAM access control (port 9098): Vigil then authenticates with the pods' IRSA role (VIGIL_KAFKA_SASL_MECHANISM=AWS_MSK_IAM, the vigil[msk-iam] extra) instead of a SCRAM password."
  type        = bool
  default     = false
}

variable "topic_prefix" {
  description = "VIGIL_TOPIC_PREFIX of the deployment (the chart's kafka.topicPrefix): the IAM policy covers the topics and groups named <prefix>vigil.*."
  type        = string
  default     = ""
}

variable "msk_instance_type" {
  description = "MSK broker instance type."
  type        = string
  default     = "kafka.m5.large"
}

variable "msk_broker_count" {
  description = "Number of brokers: a multiple of 3 (one per AZ; the cluster uses the first three private subnets)."
  type        = number
  default     = 3

  validation {
    condition     = var.msk_broker_count >= 3 && var.msk_broker_count % 3 == 0
    error_message = "msk_broker_count must be a multiple of 3."
  }
}

variable "msk_volume_size_gb" {
  description = "EBS storage per broker."
  type        = number
  default     = 500
}

variable "topic_partitions" {
  description = "Partitions of Vigil's topics (VIGIL_TOPIC_PARTITIONS and the chart's kafka.topicPartitions): the most workers replicas that share the load. Choose once."
  type        = number
  default     = 12
}

# --- Redis (ElastiCache) ------------------------------------------------------------------

variable "redis_engine_version" {
  description = "ElastiCache Redis OSS version."
  type        = string
  default     = "7.1"
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.r7g.large"
}

variable "redis_replicas" {
  description = "Replicas besides the primary, in other AZs: at least 1, for Multi-AZ automatic failover."
  type        = number
  default     = 1

  validation {
    condition     = var.redis_replicas >= 1 && var.redis_replicas <= 5
    error_message = "redis_replicas must be 1 to 5: without a replica there is no automatic failover."
  }
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the MSK broker logs (a value CloudWatch accepts, at least 365)."
  type        = number
  default     = 400

  validation {
    condition     = contains([365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of CloudWatch's values from 365 up."
  }
}

# --- Secrets ------------------------------------------------------------------------------

variable "jwt_kid" {
  description = "kid of the first JWT signing key (VIGIL_JWT_KID). Later keys are added by rotation, outside Terraform."
  type        = string
  default     = "k1"
}
