# Provider and Terraform versions. The AWS provider is held below 6.0: this skeleton uses
# the 5.x argument names (e.g. aws_vpc_security_group_ingress_rule, the ElastiCache
# replication group's num_cache_clusters); review them before moving to 6.x.
terraform {
  required_version = ">= 1.5.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60.0, < 6.0.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.6.0, < 4.0.0" # random_bytes (the cipher key) since 3.5
    }
  }

  # The platform team's state backend. State holds the generated secrets (see
  # secrets.tf): it must be encrypted and access-controlled.
  # backend "s3" {
  #   bucket         = "example-terraform-state"
  #   key            = "vigil/production.tfstate"
  #   region         = "eu-west-2"
  #   dynamodb_table = "example-terraform-locks"
  #   encrypt        = true
  # }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ Application = "vigil", Environment = var.environment }, var.tags)
  }
}
