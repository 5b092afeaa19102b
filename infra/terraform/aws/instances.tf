# The launch templates of both roles: Debian 12, the role's cloud-init,
# IMDSv2 only with one hop (containers on the host, sandboxes included,
# cannot reach the instance's credentials; Paddock's sandbox network also
# denies link-local addresses), encrypted volumes under the key.

locals {
  roles = {
    api = {
      instance_type  = var.api_instance_type
      security_group = aws_security_group.api.id
      profile        = aws_iam_instance_profile.api.arn
      volume_gib     = 20
      env_secret     = aws_secretsmanager_secret.api_env.arn
      config         = local.api_config
      gvisor         = false
      metrics        = true
    }
    worker = {
      instance_type  = var.worker_instance_type
      security_group = aws_security_group.worker.id
      profile        = aws_iam_instance_profile.worker.arn
      volume_gib     = var.worker_volume_gib
      env_secret     = aws_secretsmanager_secret.worker_env.arn
      config         = local.worker_config
      gvisor         = var.gvisor
      metrics        = false
    }
  }
}

resource "aws_launch_template" "paddock" {
  for_each               = local.roles
  name_prefix            = "${var.name}-${each.key}-"
  image_id               = var.ami_id
  instance_type          = each.value.instance_type
  vpc_security_group_ids = [each.value.security_group]
  update_default_version = true
  user_data = base64encode(templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    role         = each.key
    package      = "paddock-${each.key}"
    version      = var.paddock_version
    packages     = var.packages_bucket
    region       = local.region
    redis_secret = aws_secretsmanager_secret.redis_url.arn
    env_secret   = each.value.env_secret
    config       = each.value.config
    gvisor       = each.value.gvisor
    metrics      = each.value.metrics
    namespace    = local.metric_namespace
    metric       = local.metric_name
    group        = "${var.name}-${each.key}"
  }))
  iam_instance_profile {
    arn = each.value.profile
  }
  metadata_options {
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    http_endpoint               = "enabled"
  }
  monitoring {
    enabled = true
  }
  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size = each.value.volume_gib
      volume_type = "gp3"
      encrypted   = true
      kms_key_id  = aws_kms_key.paddock.arn
    }
  }
  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { "Name" = "${var.name}-${each.key}", "paddock:role" = each.key })
  }
  tags = local.tags
}
