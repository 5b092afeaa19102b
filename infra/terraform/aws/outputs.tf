output "api_url" {
  description = "The API's load balancer (point your DNS name at it)."
  value       = "https://${aws_lb.api.dns_name}"
}

output "api_load_balancer_zone_id" {
  description = "For a Route 53 alias record."
  value       = aws_lb.api.zone_id
}

output "redis_primary_endpoint" {
  description = "ElastiCache primary endpoint (TLS, AUTH token in the redis-url secret)."
  value       = aws_elasticache_replication_group.paddock.primary_endpoint_address
}

output "bucket" {
  description = "The evidence bucket."
  value       = aws_s3_bucket.evidence.bucket
}

output "kms_key_arn" {
  description = "The key of the bucket, Redis and the instances' volumes."
  value       = aws_kms_key.paddock.arn
}

output "api_role_arn" {
  description = "The API instances' role."
  value       = aws_iam_role.api.arn
}

output "worker_role_arn" {
  description = "The workers' role (add bedrock:InvokeModel* on your models here when workers call Bedrock themselves)."
  value       = aws_iam_role.worker.arn
}

output "bootstrap_admin_token_secret" {
  description = "Secrets Manager secret holding the bootstrap admin token (in api-env)."
  value       = aws_secretsmanager_secret.api_env.arn
}

output "worker_group" {
  description = "The worker Auto Scaling group."
  value       = aws_autoscaling_group.worker.name
}
