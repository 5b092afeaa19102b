# Secrets the instances read at boot into /etc/paddock/<role>.env (mode
# 0640, root:paddock). S3 keys are not among them: the instance roles sign.

resource "random_bytes" "audit_signing_key" {
  length = 32
}

resource "random_password" "bootstrap_admin_token" {
  length  = 48
  special = false
}

resource "aws_secretsmanager_secret" "api_env" {
  name       = "${var.name}/api-env"
  kms_key_id = aws_kms_key.paddock.arn
  # checkov:skip=CKV2_AWS_57:The audit signing key is rotated by adding the old public key to audit.trusted_public_keys and re-applying; a Lambda rotator cannot do that two-step.
  tags = local.tags
}

resource "aws_secretsmanager_secret_version" "api_env" {
  secret_id = aws_secretsmanager_secret.api_env.id
  secret_string = join("\n", [
    "PADDOCK_AUDIT__SIGNING_KEY=${random_bytes.audit_signing_key.base64}",
    "PADDOCK_API__BOOTSTRAP_ADMIN_TOKEN=${random_password.bootstrap_admin_token.result}",
  ])
}

resource "aws_secretsmanager_secret" "worker_env" {
  name       = "${var.name}/worker-env"
  kms_key_id = aws_kms_key.paddock.arn
  # checkov:skip=CKV2_AWS_57:As the API's: rotated with the audit key's two-step.
  tags = local.tags
}

resource "aws_secretsmanager_secret_version" "worker_env" {
  secret_id     = aws_secretsmanager_secret.worker_env.id
  secret_string = "PADDOCK_AUDIT__SIGNING_KEY=${random_bytes.audit_signing_key.base64}"
}
