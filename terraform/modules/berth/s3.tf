# The registry bucket: the durable truth of the fleet (blobs, manifests,
# tags, upload parts). Everything else can be rebuilt; this cannot.
resource "aws_s3_bucket" "registry" {
  #checkov:skip=CKV_AWS_144:Cross-region replication needs a second region, bucket and key that this module does not own; replicate from the root module when the registry must survive a region loss.
  #checkov:skip=CKV2_AWS_62:Berth does not consume S3 event notifications; the bucket is read and written by the replicas only.
  bucket        = local.bucket_name
  force_destroy = var.force_destroy
  tags          = local.tags
}

resource "aws_s3_bucket_ownership_controls" "registry" {
  bucket = aws_s3_bucket.registry.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "registry" {
  bucket                  = aws_s3_bucket.registry.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "registry" {
  bucket = aws_s3_bucket.registry.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.this.arn
    }
    # One data key per bucket instead of one KMS call per object: pushes of
    # many small layers would otherwise meet KMS request quotas.
    bucket_key_enabled = true
  }
}

# Versioning is on. Blobs are content-addressed and never rewritten, but tag
# links and manifests are overwritten and deleted through the API, and a
# mistaken delete (or a compromised credential) would otherwise be final.
# Old versions are kept noncurrent_version_days, which bounds the cost.
resource "aws_s3_bucket_versioning" "registry" {
  bucket = aws_s3_bucket.registry.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "registry" {
  bucket = aws_s3_bucket.registry.id

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_multipart_days
    }
  }

  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }

    expiration {
      expired_object_delete_marker = true
    }
  }

  # Upload staging data that Berth's janitor missed (a replica killed
  # mid-sweep, Redis lost with the sessions). Uploads live for an hour by
  # default, so nothing in use is this old.
  rule {
    id     = "expire-upload-staging"
    status = "Enabled"

    filter {
      prefix = local.uploads_prefix
    }

    expiration {
      days = var.uploads_expiration_days
    }

    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  depends_on = [aws_s3_bucket_versioning.registry]
}

resource "aws_s3_bucket_logging" "registry" {
  bucket        = aws_s3_bucket.registry.id
  target_bucket = aws_s3_bucket.logs.id
  target_prefix = "s3/${local.bucket_name}/"
}

data "aws_iam_policy_document" "registry_bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.registry.arn, "${aws_s3_bucket.registry.arn}/*"]

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

  statement {
    sid       = "DenyTlsOlderThan12"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.registry.arn, "${aws_s3_bucket.registry.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }

  # A write that asks for an encryption other than SSE-KMS (SSE-S3, DSSE) is
  # refused; a write that asks for nothing gets the bucket default (this key).
  statement {
    sid       = "DenyNonKmsEncryption"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.registry.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "StringNotEqualsIfExists"
      variable = "s3:x-amz-server-side-encryption"
      values   = ["aws:kms"]
    }
  }

  # A write that names another KMS key is refused. Berth is configured with
  # the key's ARN (not its ID or alias), which is what this compares.
  statement {
    sid       = "DenyOtherKmsKeys"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.registry.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "StringNotEqualsIfExists"
      variable = "s3:x-amz-server-side-encryption-aws-kms-key-id"
      values   = [aws_kms_key.this.arn]
    }
  }
}

resource "aws_s3_bucket_policy" "registry" {
  bucket = aws_s3_bucket.registry.id
  policy = data.aws_iam_policy_document.registry_bucket.json

  depends_on = [aws_s3_bucket_public_access_block.registry]
}
