data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

# The load balancer's subnets: their ranges are the only proxies whose
# X-Forwarded-For Berth believes (server.trusted_proxies).
# count, not for_each: the IDs may be unknown until the subnets exist (as in
# the example, which creates them in the same apply); their number is known.
data "aws_subnet" "lb" {
  count = length(var.public_subnet_ids)
  id    = var.public_subnet_ids[count.index]
}

locals {
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.name
  partition  = data.aws_partition.current.partition
  dns_suffix = data.aws_partition.current.dns_suffix

  bucket_name     = coalesce(var.bucket_name, "${var.name}-${local.account_id}-${local.region}")
  log_bucket_name = "${var.name}-logs-${local.account_id}-${local.region}"

  # Every log group of the module lives under this prefix, which is what the
  # KMS key policy lets CloudWatch Logs encrypt for.
  log_group_prefix = "/berth/${var.name}"

  # Berth stages upload data under this prefix of the bucket.
  uploads_prefix = "${var.storage_prefix}_uploads/"

  container_port = 5000
  redis_port     = 6379
  # The replica mesh's internal listener (mutual TLS, replicas only).
  mesh_port = 5443
  # Where the blob cache lives, on the task's ephemeral storage.
  cache_dir = "/var/cache/berth"

  # Files the init container writes for Berth; the volume is mounted
  # read-only into the Berth container.
  secrets_dir = "/run/secrets"

  tags = merge(var.tags, {
    Application     = "berth"
    BerthDeployment = var.name
  })
}
