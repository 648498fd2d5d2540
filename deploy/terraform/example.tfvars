# Example values; copy to <env>.tfvars (git-ignored) and fill in.
region             = "eu-west-2"
environment        = "production"
vpc_id             = "vpc-0123456789abcdef0"
private_subnet_ids = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb", "subnet-0cccccccccccccccc"]
eks_cluster_name   = "platform-production"
jwt_kid            = "2025-01"
