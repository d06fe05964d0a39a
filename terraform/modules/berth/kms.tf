# One customer-managed key for everything this deployment stores: the
# registry bucket, Redis at rest, the secrets and the CloudWatch log groups.
resource "aws_kms_key" "this" {
  description             = "Berth ${var.name}: registry bucket, Redis, secrets and logs"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/berth-${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

# In a key policy, Resource "*" means "this key". The account keeps
# administering the key through IAM (so the roles below need their own IAM
# grants, which name this key's ARN); CloudWatch Logs may use it only for
# this deployment's log groups.
data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:This is a key policy, not an IAM policy: Resource "*" means this key only, and the account must keep administering its own key or the key becomes unmanageable.
  #checkov:skip=CKV_AWS_111:This is a key policy: Resource "*" means this key only; CloudWatch Logs is further limited to this deployment's log groups by encryption context.
  #checkov:skip=CKV_AWS_356:This is a key policy: "*" is the only resource a key policy can name, and it means the key the policy is attached to.
  statement {
    sid       = "AccountAdministersKeyThroughIam"
    effect    = "Allow"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid    = "CloudWatchLogsForThisDeployment"
    effect = "Allow"
    actions = [
      "kms:Encrypt",
      "kms:Decrypt",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.${local.dns_suffix}"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${local.log_group_prefix}/*"]
    }
  }
}
