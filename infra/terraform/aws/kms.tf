# One customer-managed key for the bucket, Redis, the secrets and the
# instances' volumes: rotated yearly, usable by the principals the IAM
# policies allow.
resource "aws_kms_key" "paddock" {
  depends_on              = [aws_iam_service_linked_role.autoscaling]
  description             = "${var.name}: evidence bucket, Redis, secrets, volumes"
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
  # EC2 Auto Scaling launches instances whose volumes are encrypted under
  # this key; its service-linked role's permissions cannot be edited, so
  # the key policy grants them (without this, launches fail).
  statement {
    sid       = "AutoScalingUsesTheKeyForVolumes"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = [local.autoscaling_role]
    }
  }
  statement {
    sid       = "AutoScalingGrantsTheKeyToVolumes"
    actions   = ["kms:CreateGrant"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = [local.autoscaling_role]
    }
    condition {
      test     = "Bool"
      variable = "kms:GrantIsForAWSResource"
      values   = ["true"]
    }
  }
}

# In an account that has never had an Auto Scaling group the role does not
# exist yet, and a key policy naming it is refused: create it then.
resource "aws_iam_service_linked_role" "autoscaling" {
  count            = var.create_autoscaling_service_linked_role ? 1 : 0
  aws_service_name = "autoscaling.amazonaws.com"
}

locals {
  autoscaling_role = "arn:${local.partition}:iam::${local.account_id}:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"
}
