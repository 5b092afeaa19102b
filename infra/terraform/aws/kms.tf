# One customer-managed key for the bucket, Redis and logs: rotated yearly,
# usable by this account's principals the IAM policies below allow, and by
# CloudWatch Logs for the log groups.
resource "aws_kms_key" "paddock" {
  description             = "${var.name}: evidence bucket, Redis, logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags
}

resource "aws_kms_alias" "paddock" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.paddock.key_id
}

data "aws_iam_policy_document" "kms" {
  # checkov:skip=CKV_AWS_111:A key policy's "*" resource is the key itself (AWS's documented default statement); who may use the key is decided by the roles' IAM policies, which name it.
  # checkov:skip=CKV_AWS_356:As above: in a key policy "*" means this key only.
  # checkov:skip=CKV_AWS_109:As above: the account root statement is what lets IAM policies grant the key at all.
  # The account administers the key; use is granted by IAM policies.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }
  statement {
    sid       = "CloudWatchLogs"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/${var.name}/*"]
    }
  }
}
