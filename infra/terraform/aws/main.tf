# Paddock on AWS: the API behind an ALB, a worker fleet scaled on the
# queue's dispatchable runs, ElastiCache Redis, the evidence bucket with
# Object Lock. See README "Deploying" for why each permission is there.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  tags       = merge({ "app" = "paddock" }, var.tags)
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.name
  partition  = data.aws_partition.current.partition
  bucket_arn = "arn:${local.partition}:s3:::${var.bucket_name}"
  # The queue's demand (running + dispatchable runs), published by the
  # API hosts.
  metric_namespace = "Paddock"
  metric_name      = "QueueDemand"
}
