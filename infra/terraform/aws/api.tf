# The API: an Auto Scaling group behind an ALB that terminates TLS
# (TLS 1.2+ policy), drops invalid headers and answers nothing on plain
# HTTP (no port-80 listener).

resource "aws_lb" "api" {
  name                       = "${var.name}-api"
  internal                   = var.internal_load_balancer
  load_balancer_type         = "application"
  security_groups            = [aws_security_group.alb.id]
  subnets                    = var.public_subnet_ids
  drop_invalid_header_fields = true
  enable_deletion_protection = true
  access_logs {
    bucket  = var.access_logs_bucket
    prefix  = "alb/${var.name}"
    enabled = true
  }
  # checkov:skip=CKV2_AWS_28:A WAF is the company's edge choice (most put the API behind an internal ALB reached from portals only); attach one with aws_wafv2_web_acl_association if yours is internet-facing.
  tags = local.tags
}

resource "aws_lb_target_group" "api" {
  name                 = "${var.name}-api"
  port                 = 8080
  protocol             = "HTTP"
  vpc_id               = var.vpc_id
  deregistration_delay = 30
  # /healthz (the process), not /readyz: a Redis or S3 blip must not mark
  # every instance unhealthy and have the group replace the fleet.
  health_check {
    path                = "/healthz"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
  # checkov:skip=CKV_AWS_378:TLS ends at the ALB; from it to the API is the VPC's private network, and the instances accept only the ALB's security group.
  tags = local.tags
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.api.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.api.arn
  }
  tags = local.tags
}


# /metrics is for the scrapers inside (the publisher reads it on the
# instance): not served through the load balancer.
resource "aws_lb_listener_rule" "no_metrics" {
  listener_arn = aws_lb_listener.https.arn
  priority     = 1
  condition {
    path_pattern {
      values = ["/metrics", "/metrics/*"]
    }
  }
  action {
    type = "fixed-response"
    fixed_response {
      content_type = "application/problem+json"
      status_code  = "404"
      message_body = "{\"title\": \"Not Found\", \"status\": 404}"
    }
  }
  tags = local.tags
}

resource "aws_autoscaling_group" "api" {
  name                      = "${var.name}-api"
  min_size                  = var.api_min_size
  max_size                  = var.api_max_size
  vpc_zone_identifier       = var.private_subnet_ids
  target_group_arns         = [aws_lb_target_group.api.arn]
  health_check_type         = "ELB"
  health_check_grace_period = 120
  launch_template {
    id      = aws_launch_template.paddock["api"].id
    version = aws_launch_template.paddock["api"].latest_version
  }
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 50
    }
  }
  dynamic "tag" {
    for_each = local.tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }
}

resource "aws_autoscaling_policy" "api_cpu" {
  name                   = "${var.name}-api-cpu"
  autoscaling_group_name = aws_autoscaling_group.api.name
  policy_type            = "TargetTrackingScaling"
  target_tracking_configuration {
    predefined_metric_specification {
      predefined_metric_type = "ASGAverageCPUUtilization"
    }
    target_value = 60
  }
}

# The Paddock config each role's instances get (secrets apart).
locals {
  config_vars = {
    region        = local.region
    bucket        = var.bucket_name
    audit_prefix  = var.audit_prefix
    export_prefix = var.export_prefix
    concurrency   = var.worker_concurrency
    runtime       = var.gvisor ? "runsc" : "runc"
    retention     = var.retention_days
  }
  api_config    = templatefile("${path.module}/templates/api.toml.tftpl", local.config_vars)
  worker_config = templatefile("${path.module}/templates/worker.toml.tftpl", local.config_vars)
}
