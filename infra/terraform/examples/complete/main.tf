# Paddock in an existing VPC: an internal API for the company's portals, a
# worker fleet of up to 20 hosts, ElastiCache and the evidence bucket.

terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60, < 7.0"
    }
  }
}

provider "aws" {
  region = "eu-west-1"
}

module "paddock" {
  source = "../../aws"

  name               = "paddock-prod"
  vpc_id             = "vpc-0123456789abcdef0"
  private_subnet_ids = ["subnet-0aaa1111bbbb2222c", "subnet-0ddd3333eeee4444f", "subnet-0fff5555aaaa6666b"]
  public_subnet_ids  = ["subnet-0aaa1111bbbb2222c", "subnet-0ddd3333eeee4444f"]
  api_ingress_cidrs  = ["10.0.0.0/8"]
  certificate_arn    = "arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
  ami_id             = "ami-0123456789abcdef0" # Debian 12 (bookworm), amd64
  packages_bucket    = "acme-artifacts/paddock"
  paddock_version    = "0.1.0"
  bucket_name        = "acme-paddock-evidence"
  access_logs_bucket = "acme-access-logs"
  gvisor             = true
  worker_max_size    = 20

  tags = {
    "cost-center" = "platform"
  }
}

output "api_url" {
  value = module.paddock.api_url
}
