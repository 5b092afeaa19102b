# The evidence bucket: runs' artifacts, logs and transcripts (runs/), the
# signed audit trail (audit_prefix) and compliance exports (export_prefix).
resource "aws_s3_bucket" "evidence" {
  # checkov:skip=CKV2_AWS_62:Every write Paddock makes is in its own signed audit trail and the bucket's access logs; event notifications would add a consumer nothing reads.
  # checkov:skip=CKV_AWS_144:Cross-region replication is the company's DR choice and needs a locked bucket in the DR region (another provider); add aws_s3_bucket_replication_configuration there.
  bucket              = var.bucket_name
  object_lock_enabled = true
  tags                = local.tags
}

resource "aws_s3_bucket_versioning" "evidence" {
  bucket = aws_s3_bucket.evidence.id
  versioning_configuration {
    status = "Enabled"
  }
}

# Nothing written can be deleted or overwritten for object_lock_default_days,
# by anyone; audit segments and digests are written with a compliance
# retention of retention_days.audit of their own (audit.object_lock_mode).
resource "aws_s3_bucket_object_lock_configuration" "evidence" {
  bucket = aws_s3_bucket.evidence.id
  rule {
    default_retention {
      mode = "COMPLIANCE"
      days = var.object_lock_default_days
    }
  }
  depends_on = [aws_s3_bucket_versioning.evidence]
}

resource "aws_s3_bucket_server_side_encryption_configuration" "evidence" {
  bucket = aws_s3_bucket.evidence.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.paddock.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "evidence" {
  bucket                  = aws_s3_bucket.evidence.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "evidence" {
  bucket = aws_s3_bucket.evidence.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_logging" "evidence" {
  bucket        = aws_s3_bucket.evidence.id
  target_bucket = var.access_logs_bucket
  target_prefix = "s3/${var.bucket_name}/"
}

# Paddock's sweeper deletes what is past its class's days (honouring legal
# holds, recording each sweep in the trail); on a versioned bucket that
# leaves the data as a noncurrent version, which these rules remove once
# its lock has passed. Current run objects and the trail are never expired
# here: a lifecycle rule cannot see Paddock's legal holds.
resource "aws_s3_bucket_lifecycle_configuration" "evidence" {
  bucket = aws_s3_bucket.evidence.id

  rule {
    id     = "runs-deleted-by-the-sweeper"
    status = "Enabled"
    filter {
      prefix = "runs/"
    }
    noncurrent_version_expiration {
      noncurrent_days = var.object_lock_default_days + 1
    }
    transition {
      days          = 30
      storage_class = "STANDARD_IA"
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  rule {
    id     = "audit-trimmed-by-the-sweeper"
    status = "Enabled"
    filter {
      prefix = "${var.audit_prefix}/"
    }
    # Locked for retention_days.audit: a noncurrent version goes after that.
    noncurrent_version_expiration {
      noncurrent_days = var.retention_days.audit + 1
    }
    transition {
      days          = 90
      storage_class = "GLACIER_IR"
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  # Exports are never held: they expire after retention_days.exports, as
  # the API's own lifecycle rule for them would (it needs no permission
  # here: this rule is it).
  rule {
    id     = "exports"
    status = "Enabled"
    filter {
      prefix = "${var.export_prefix}/"
    }
    expiration {
      days = var.retention_days.exports
    }
    noncurrent_version_expiration {
      noncurrent_days = var.object_lock_default_days + 1
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  rule {
    id     = "delete-markers"
    status = "Enabled"
    filter {}
    expiration {
      expired_object_delete_marker = true
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.evidence]
}

# TLS only (objects are encrypted under the key by the bucket's default).
resource "aws_s3_bucket_policy" "evidence" {
  bucket = aws_s3_bucket.evidence.id
  policy = data.aws_iam_policy_document.evidence_bucket.json
}

data "aws_iam_policy_document" "evidence_bucket" {
  statement {
    sid       = "TlsOnly"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [local.bucket_arn, "${local.bucket_arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}
