# Instance roles. Each statement is listed with its reason in README
# "Deploying"; nothing here grants s3:* or a wildcard resource but the
# CloudWatch metric (PutMetricData has no resource-level permissions).

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

locals {
  runs_arn    = "${local.bucket_arn}/runs/*"
  audit_arn   = "${local.bucket_arn}/${var.audit_prefix}/*"
  exports_arn = "${local.bucket_arn}/${var.export_prefix}/*"
  packages    = "arn:${local.partition}:s3:::${var.packages_bucket}/paddock-*_${var.paddock_version}_amd64.deb"
}

# The API: runs' objects to read (records, logs, artifacts for exports);
# the audit trail to write (the shipper) with its retention, and read
# (verify, export); exports to write and read. No delete anywhere.
data "aws_iam_policy_document" "api" {
  statement {
    sid       = "ListTheBucket"
    actions   = ["s3:ListBucket", "s3:GetBucketObjectLockConfiguration"]
    resources = [local.bucket_arn]
  }
  statement {
    sid       = "ReadRuns"
    actions   = ["s3:GetObject"]
    resources = [local.runs_arn]
  }
  statement {
    sid       = "WriteAndReadTheAuditTrail"
    actions   = ["s3:PutObject", "s3:PutObjectRetention", "s3:GetObject"]
    resources = [local.audit_arn]
  }
  statement {
    sid       = "WriteAndReadExports"
    actions   = ["s3:PutObject", "s3:GetObject"]
    resources = [local.exports_arn]
  }
  statement {
    sid       = "UseTheKey"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [aws_kms_key.paddock.arn]
  }
  statement {
    sid       = "ReadItsSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.redis_url.arn, aws_secretsmanager_secret.api_env.arn]
  }
  statement {
    sid       = "FetchItsPackage"
    actions   = ["s3:GetObject"]
    resources = [local.packages]
  }
  statement {
    sid       = "PublishTheQueueMetric"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = [local.metric_namespace]
    }
  }
}

# Workers: runs' objects to write and read; and, for the retention sweeper
# (one worker of the fleet at a time), deleting what is past its class's
# days under runs/ and in the audit trail, reading the trail to check it
# first and writing its signed trim records.
data "aws_iam_policy_document" "worker" {
  statement {
    sid       = "ListTheBucket"
    actions   = ["s3:ListBucket", "s3:GetBucketObjectLockConfiguration"]
    resources = [local.bucket_arn]
  }
  statement {
    sid       = "WriteAndReadRuns"
    actions   = ["s3:PutObject", "s3:GetObject"]
    resources = [local.runs_arn]
  }
  statement {
    sid       = "SweepExpiredRuns"
    actions   = ["s3:DeleteObject"]
    resources = [local.runs_arn, local.exports_arn]
  }
  statement {
    sid       = "SweepAndTrimTheAuditTrail"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:PutObjectRetention", "s3:DeleteObject"]
    resources = [local.audit_arn]
  }
  statement {
    sid       = "UseTheKey"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [aws_kms_key.paddock.arn]
  }
  statement {
    sid       = "ReadItsSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.redis_url.arn, aws_secretsmanager_secret.worker_env.arn]
  }
  statement {
    sid       = "FetchItsPackage"
    actions   = ["s3:GetObject"]
    resources = [local.packages]
  }
  statement {
    sid       = "CompleteItsDrain"
    actions   = ["autoscaling:CompleteLifecycleAction"]
    resources = ["arn:${local.partition}:autoscaling:${local.region}:${local.account_id}:autoScalingGroup:*:autoScalingGroupName/${var.name}-worker"]
  }
}

resource "aws_iam_role" "api" {
  name               = "${var.name}-api"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "api" {
  name   = "paddock-api"
  role   = aws_iam_role.api.id
  policy = data.aws_iam_policy_document.api.json
}

resource "aws_iam_instance_profile" "api" {
  name = "${var.name}-api"
  role = aws_iam_role.api.name
}

resource "aws_iam_role" "worker" {
  name               = "${var.name}-worker"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "worker" {
  name   = "paddock-worker"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.worker.json
}

resource "aws_iam_instance_profile" "worker" {
  name = "${var.name}-worker"
  role = aws_iam_role.worker.name
}

# Session Manager instead of SSH (no port 22 anywhere).
resource "aws_iam_role_policy_attachment" "ssm" {
  for_each   = { api = aws_iam_role.api.name, worker = aws_iam_role.worker.name }
  role       = each.value
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}
