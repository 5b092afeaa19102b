# Security groups. Sandboxes are containers on the worker hosts with no
# route out but their run's egress proxy and gateway in the worker process
# (Docker internal networks plus the worker's iptables rules); at the VPC
# level nothing may connect to a worker at all.

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "Paddock API load balancer: HTTPS from the allowed networks"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each          = toset(var.api_ingress_cidrs)
  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from ${each.value}"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "alb_to_api" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the API instances"
  referenced_security_group_id = aws_security_group.api.id
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
}

resource "aws_security_group" "api" {
  name        = "${var.name}-api"
  description = "Paddock API instances: 8080 from the load balancer only"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "api_from_alb" {
  security_group_id            = aws_security_group.api.id
  description                  = "From the load balancer"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
}

resource "aws_security_group" "worker" {
  name        = "${var.name}-worker"
  description = "Paddock workers: no ingress at all"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_security_group" "redis" {
  name        = "${var.name}-redis"
  description = "Paddock Redis: 6379 from the API and the workers only"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "redis_from" {
  for_each = {
    api    = aws_security_group.api.id
    worker = aws_security_group.worker.id
  }
  security_group_id            = aws_security_group.redis.id
  description                  = "Redis (TLS) from the ${each.key}"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
}

# API and workers: Redis, and HTTPS out (S3, STS, CloudWatch, GitHub, model
# providers, package mirrors) through NAT or VPC endpoints.
resource "aws_vpc_security_group_egress_rule" "to_redis" {
  for_each = {
    api    = aws_security_group.api.id
    worker = aws_security_group.worker.id
  }
  security_group_id            = each.value
  description                  = "To Redis"
  referenced_security_group_id = aws_security_group.redis.id
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
}

resource "aws_vpc_security_group_egress_rule" "out" {
  # HTTPS: S3, STS, CloudWatch, Secrets Manager, GitHub, model providers.
  # HTTP: Debian's package mirrors for the boot-time install (signed
  # packages). Narrow egress_cidrs to your NAT, proxy or mirror.
  for_each = {
    for t in setproduct(["api", "worker"], var.egress_cidrs, [443, 80]) : "${t[0]}-${t[1]}-${t[2]}" => {
      group = t[0] == "api" ? aws_security_group.api.id : aws_security_group.worker.id
      cidr  = t[1]
      port  = t[2]
    }
  }
  security_group_id = each.value.group
  description       = each.value.port == 443 ? "HTTPS out" : "Debian package mirrors (HTTP, signed packages)"
  cidr_ipv4         = each.value.cidr
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
}
