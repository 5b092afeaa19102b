# The worker fleet: an Auto Scaling group on Debian 12 with Docker (and
# gVisor when asked), scaled so each worker has worker_concurrency runs to
# do: target tracking on demand (running + dispatchable runs) per
# in-service worker.


resource "aws_autoscaling_group" "worker" {
  name                = "${var.name}-worker"
  min_size            = var.worker_min_size
  max_size            = var.worker_max_size
  vpc_zone_identifier = var.private_subnet_ids
  # Scale-in drains a worker before its instance goes: the hook holds the
  # instance in Terminating:Wait, paddock-drain (cloud-init) sees that in
  # the instance metadata, stops the worker (no new claims; running runs
  # finish within TimeoutStopSec=660) and completes the hook.
  default_instance_warmup = 120
  # Published so the scaling policy can divide by it.
  enabled_metrics = ["GroupInServiceInstances"]
  launch_template {
    id = aws_launch_template.paddock["worker"].id
    # A new version (a new paddock_version) changes the group: the instance
    # refresh below rolls it out.
    version = aws_launch_template.paddock["worker"].latest_version
  }
  initial_lifecycle_hook {
    name                 = "drain"
    lifecycle_transition = "autoscaling:EC2_INSTANCE_TERMINATING"
    default_result       = "CONTINUE"
    heartbeat_timeout    = 720
  }
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 75
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

# Demand (published by the API hosts from paddock_queue_runs{state="running"}
# and paddock_queue_dispatchable) divided by in-service workers, held at
# worker_concurrency. A worker picked for scale-in drains first (the hook).
resource "aws_autoscaling_policy" "worker_queue" {
  name                   = "${var.name}-worker-queue"
  autoscaling_group_name = aws_autoscaling_group.worker.name
  policy_type            = "TargetTrackingScaling"
  target_tracking_configuration {
    target_value = var.worker_concurrency
    customized_metric_specification {
      metrics {
        id          = "demand"
        return_data = false
        metric_stat {
          metric {
            namespace   = local.metric_namespace
            metric_name = local.metric_name
          }
          stat = "Maximum"
        }
      }
      metrics {
        id          = "workers"
        return_data = false
        metric_stat {
          metric {
            namespace   = "AWS/AutoScaling"
            metric_name = "GroupInServiceInstances"
            dimensions {
              name  = "AutoScalingGroupName"
              value = "${var.name}-worker"
            }
          }
          stat = "Average"
        }
      }
      metrics {
        id          = "per_worker"
        expression  = "demand / MAX([workers, 1])"
        label       = "Runs wanted per worker"
        return_data = true
      }
    }
  }
}
