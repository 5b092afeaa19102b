# ElastiCache Redis: a primary and var.redis_replicas replicas in other
# AZs, automatic failover, TLS in transit, KMS at rest, an AUTH token.
# ElastiCache offers no CONFIG and no appendfsync, so Paddock runs with
# audit.durability = "replica": a run is acknowledged once its request
# event is on a replica (WAIT), which survives the primary's loss.

resource "random_password" "redis_auth" {
  length  = 64
  special = false
}

resource "aws_elasticache_subnet_group" "paddock" {
  name       = var.name
  subnet_ids = var.private_subnet_ids
  tags       = local.tags
}

resource "aws_elasticache_replication_group" "paddock" {
  replication_group_id       = var.name
  description                = "Paddock queue, state and pending audit log"
  engine                     = "redis"
  engine_version             = "7.1"
  node_type                  = var.redis_node_type
  num_cache_clusters         = 1 + var.redis_replicas
  port                       = 6379
  subnet_group_name          = aws_elasticache_subnet_group.paddock.name
  security_group_ids         = [aws_security_group.redis.id]
  automatic_failover_enabled = true
  multi_az_enabled           = true
  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.paddock.arn
  transit_encryption_enabled = true
  auth_token                 = random_password.redis_auth.result
  auto_minor_version_upgrade = true
  snapshot_retention_limit   = 7
  maintenance_window         = "sun:05:00-sun:06:00"
  snapshot_window            = "03:00-04:00"
  # noeviction: Paddock's queue and pending audit log must never be evicted.
  parameter_group_name = aws_elasticache_parameter_group.paddock.name
  apply_immediately    = false
  tags                 = local.tags
}

resource "aws_elasticache_parameter_group" "paddock" {
  name   = var.name
  family = "redis7"
  parameter {
    name  = "maxmemory-policy"
    value = "noeviction"
  }
  tags = local.tags
}

# The connection string (with its token) for the instances, read at boot.
resource "aws_secretsmanager_secret" "redis_url" {
  name       = "${var.name}/redis-url"
  kms_key_id = aws_kms_key.paddock.arn
  # checkov:skip=CKV2_AWS_57:The AUTH token is rotated by re-applying with a new random_password (ElastiCache token rotation is a two-step modify Paddock does not automate); a Lambda rotator would only add a moving part.
  tags = local.tags
}

resource "aws_secretsmanager_secret_version" "redis_url" {
  secret_id     = aws_secretsmanager_secret.redis_url.id
  secret_string = "rediss://:${random_password.redis_auth.result}@${aws_elasticache_replication_group.paddock.primary_endpoint_address}:6379/"
}
