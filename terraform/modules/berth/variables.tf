# ---------------------------------------------------------------------------
# Naming and placement
# ---------------------------------------------------------------------------

variable "name" {
  description = "Name of this Berth deployment. Prefixes every resource; also used in the S3 bucket and ElastiCache names, so lowercase letters, digits and hyphens, at most 24 characters."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,22}[a-z0-9]$", var.name)) && !strcontains(var.name, "--")
    error_message = "name must be 2-24 characters of lowercase letters, digits and single hyphens, starting with a letter and not ending with a hyphen."
  }
}

variable "vpc_id" {
  description = "ID of the VPC that holds the load balancer, the replicas and Redis."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0123456789abcdef0."
  }
}

variable "private_subnet_ids" {
  description = "Private subnets (two or more, in different availability zones) for the replicas and Redis. They need a route to S3, ECR, Secrets Manager and CloudWatch Logs: a NAT gateway or VPC endpoints."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2 && alltrue([for s in var.private_subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "private_subnet_ids must list at least two subnet IDs (subnet-...)."
  }
}

variable "public_subnet_ids" {
  description = "Subnets (two or more, in different availability zones) for the load balancer: public ones for an internet-facing registry, private ones when internal = true."
  type        = list(string)

  validation {
    condition     = length(var.public_subnet_ids) >= 2 && alltrue([for s in var.public_subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "public_subnet_ids must list at least two subnet IDs (subnet-...)."
  }
}

variable "tags" {
  description = "Tags added to every resource that takes tags."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------
# Container
# ---------------------------------------------------------------------------

variable "image" {
  description = "Berth container image, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/berth:1.2.3 (pin a tag you built, or better a digest)."
  type        = string

  validation {
    condition     = length(var.image) > 0 && !can(regex(":latest$", var.image))
    error_message = "image must be set and must not use the mutable :latest tag."
  }
}

variable "ecr_repository_arn" {
  description = "ARN of the private ECR repository that holds the image; the execution role may pull from it. Null when the image is public."
  type        = string
  default     = null

  validation {
    condition     = var.ecr_repository_arn == null || can(regex("^arn:aws[a-z-]*:ecr:[a-z0-9-]+:[0-9]{12}:repository/.+$", var.ecr_repository_arn))
    error_message = "ecr_repository_arn must be an ECR repository ARN or null."
  }
}

variable "init_image" {
  description = "Small image with a POSIX shell that writes the secrets (htpasswd, TLS certificate and key) into a volume on the task's ephemeral storage before Berth starts. Pin it by digest in production."
  type        = string
  default     = "public.ecr.aws/docker/library/busybox:1.37"
}

variable "cpu_architecture" {
  description = "CPU architecture of the image: X86_64 or ARM64."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "task_cpu" {
  description = "Fargate task CPU units (1024 = 1 vCPU)."
  type        = number
  default     = 1024

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.task_cpu)
    error_message = "task_cpu must be a Fargate CPU size: 256, 512, 1024, 2048, 4096, 8192 or 16384."
  }
}

variable "task_memory" {
  description = "Fargate task memory in MiB; must be a valid combination with task_cpu."
  type        = number
  default     = 2048

  validation {
    condition     = var.task_memory >= 512 && var.task_memory <= 122880
    error_message = "task_memory must be between 512 and 122880 MiB."
  }
}

variable "desired_count" {
  description = "Number of Berth replicas. Replicas are stateless; three spread over the availability zones survive losing one zone."
  type        = number
  default     = 3

  validation {
    condition     = var.desired_count >= 1 && floor(var.desired_count) == var.desired_count
    error_message = "desired_count must be a whole number of at least 1."
  }
}

variable "platform_version" {
  description = "Fargate platform version."
  type        = string
  default     = "LATEST"
}

variable "log_level" {
  description = "Berth log filter (log.level), e.g. info or berth=debug,info."
  type        = string
  default     = "info"
}

variable "storage_prefix" {
  description = "Key prefix inside the bucket (storage.s3.prefix), so several registries can share one bucket. Empty for none; otherwise it should end with /."
  type        = string
  default     = ""

  validation {
    condition     = var.storage_prefix == "" || can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/$", var.storage_prefix))
    error_message = "storage_prefix must be empty or a path of safe characters ending with /."
  }
}

variable "extra_environment" {
  description = "Further BERTH__SECTION__KEY settings for the container (no secrets here: they are stored in plain text in the task definition)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.extra_environment) : can(regex("^BERTH__[A-Z0-9_]+$", k))])
    error_message = "extra_environment keys must be BERTH__SECTION__KEY variables."
  }
}

# ---------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------

variable "create_admin_user" {
  description = "Put a user named admin_username with a generated password into the htpasswd file; the password is stored in the admin-password secret. Turn off only when htpasswd lists your users."
  type        = bool
  default     = true
}

variable "admin_username" {
  description = "Name of the generated user (see create_admin_user)."
  type        = string
  default     = "admin"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,64}$", var.admin_username))
    error_message = "admin_username must be 1-64 letters, digits, dots, underscores or hyphens."
  }
}

variable "htpasswd" {
  description = "Further htpasswd lines (user:hash, bcrypt, argon2id or SHA-crypt; `berth user hash NAME` makes one), e.g. file(\"users.htpasswd\"). Hashes end up in the Terraform state, which must be encrypted either way."
  type        = string
  default     = ""
  sensitive   = true
  nullable    = false
}

# ---------------------------------------------------------------------------
# Storage (S3)
# ---------------------------------------------------------------------------

variable "bucket_name" {
  description = "Name of the registry bucket. Null: <name>-<account id>-<region>."
  type        = string
  default     = null

  validation {
    condition     = var.bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name."
  }
}

variable "force_destroy" {
  description = "Let terraform destroy delete the buckets with everything in them. Keep false outside throw-away environments."
  type        = bool
  default     = false
}

variable "abort_multipart_days" {
  description = "Days after which S3 aborts multipart uploads that were never completed (parts of abandoned pushes)."
  type        = number
  default     = 7

  validation {
    condition     = var.abort_multipart_days >= 1 && var.abort_multipart_days <= 365
    error_message = "abort_multipart_days must be between 1 and 365."
  }
}

variable "uploads_expiration_days" {
  description = "Days after which objects under the _uploads/ staging prefix expire. Berth's own janitor removes them after the upload session TTL (1h by default); this is the safety net, so keep it well above that TTL."
  type        = number
  default     = 2

  validation {
    condition     = var.uploads_expiration_days >= 1 && var.uploads_expiration_days <= 365
    error_message = "uploads_expiration_days must be between 1 and 365."
  }
}

variable "noncurrent_version_days" {
  description = "Days an overwritten or deleted object version is kept (the bucket is versioned) before S3 removes it."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_days >= 1 && var.noncurrent_version_days <= 3650
    error_message = "noncurrent_version_days must be between 1 and 3650."
  }
}

variable "log_bucket_expiration_days" {
  description = "Days the S3 access logs and load balancer access logs are kept."
  type        = number
  default     = 365

  validation {
    condition     = var.log_bucket_expiration_days >= 1
    error_message = "log_bucket_expiration_days must be at least 1."
  }
}

# ---------------------------------------------------------------------------
# Keys and logs
# ---------------------------------------------------------------------------

variable "kms_deletion_window_days" {
  description = "Waiting period before the customer-managed KMS key is deleted after terraform destroy."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_days >= 7 && var.kms_deletion_window_days <= 30
    error_message = "kms_deletion_window_days must be between 7 and 30."
  }
}

variable "log_retention_days" {
  description = "Retention of the CloudWatch log groups (Berth, Redis)."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a value CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)."
  }
}

# ---------------------------------------------------------------------------
# Redis (ElastiCache)
# ---------------------------------------------------------------------------

variable "redis_node_type" {
  description = "ElastiCache node type. Berth keeps only sessions, caches and counters in Redis, so small nodes suffice."
  type        = string
  default     = "cache.t4g.small"

  validation {
    condition     = can(regex("^cache\\.", var.redis_node_type))
    error_message = "redis_node_type must be an ElastiCache node type (cache.*)."
  }
}

variable "redis_num_cache_clusters" {
  description = "Nodes in the replication group (a primary and replicas); at least 2 for automatic failover and Multi-AZ."
  type        = number
  default     = 2

  validation {
    condition     = var.redis_num_cache_clusters >= 2 && var.redis_num_cache_clusters <= 6
    error_message = "redis_num_cache_clusters must be between 2 and 6."
  }
}

variable "redis_engine_version" {
  description = "Redis OSS engine version."
  type        = string
  default     = "7.1"
}

variable "redis_parameter_group_name" {
  description = "ElastiCache parameter group (cluster mode must stay disabled: Berth talks to one primary endpoint)."
  type        = string
  default     = "default.redis7"
}

variable "redis_snapshot_retention_days" {
  description = "Days of automatic Redis snapshots. Redis holds nothing durable, but a snapshot shortens recovery of in-flight uploads."
  type        = number
  default     = 7

  validation {
    condition     = var.redis_snapshot_retention_days >= 1 && var.redis_snapshot_retention_days <= 35
    error_message = "redis_snapshot_retention_days must be between 1 and 35."
  }
}

variable "redis_maintenance_window" {
  description = "Weekly maintenance window of Redis (UTC)."
  type        = string
  default     = "sun:05:00-sun:06:00"
}

variable "redis_snapshot_window" {
  description = "Daily snapshot window of Redis (UTC); must not overlap the maintenance window."
  type        = string
  default     = "03:00-04:00"
}

# ---------------------------------------------------------------------------
# Load balancer
# ---------------------------------------------------------------------------

variable "certificate_arn" {
  description = "ARN of the ACM certificate the HTTPS listener presents to clients."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/.+$", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN."
  }
}

variable "ssl_policy" {
  description = "TLS policy of the HTTPS listener; a TLS 1.3 policy."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"

  validation {
    condition     = can(regex("^ELBSecurityPolicy-TLS13-", var.ssl_policy))
    error_message = "ssl_policy must be one of the ELBSecurityPolicy-TLS13-* policies."
  }
}

variable "allowed_cidr_blocks" {
  description = "IPv4 ranges allowed to reach the load balancer on 443 (and 80, which only redirects to 443)."
  type        = list(string)

  validation {
    condition     = length(var.allowed_cidr_blocks) > 0 && alltrue([for c in var.allowed_cidr_blocks : can(cidrhost(c, 0))])
    error_message = "allowed_cidr_blocks must list at least one valid IPv4 CIDR block."
  }
}

variable "internal" {
  description = "Make the load balancer internal (reachable only from inside the VPC and connected networks)."
  type        = bool
  default     = false
}

variable "alb_deletion_protection" {
  description = "Deletion protection of the load balancer."
  type        = bool
  default     = true
}

variable "alb_idle_timeout" {
  description = "Seconds the load balancer keeps an idle connection. Above Berth's body_idle_timeout (60s) so that Berth, not the balancer, decides when a stalled upload ends."
  type        = number
  default     = 120

  validation {
    condition     = var.alb_idle_timeout >= 1 && var.alb_idle_timeout <= 4000
    error_message = "alb_idle_timeout must be between 1 and 4000 seconds."
  }
}

variable "waf_web_acl_arn" {
  description = "ARN of a WAFv2 web ACL to associate with the load balancer, or null. Mind WAF's body-size rules: image layers are large request bodies."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------
# Blob cache and replica mesh
# ---------------------------------------------------------------------------

variable "mesh_enabled" {
  description = "Serve blobs from a cache on each task's ephemeral storage, filled once per blob for the whole service through the replica mesh (mutual TLS between tasks on port 5443). Off, every pull reads S3."
  type        = bool
  default     = true
}

variable "blob_cache_max_bytes" {
  description = "Budget of each task's blob cache, e.g. \"16GiB\" (least recently used blobs are evicted past it). Keep it below ephemeral_storage_gib with room for /tmp."
  type        = string
  default     = "16GiB"

  validation {
    condition     = can(regex("^[0-9]+(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?$", var.blob_cache_max_bytes))
    error_message = "blob_cache_max_bytes must be a size such as 16GiB or 500MB."
  }
}

variable "ephemeral_storage_gib" {
  description = "Ephemeral storage of each Fargate task in GiB (21-200), which holds the blob cache."
  type        = number
  default     = 24

  validation {
    condition     = var.ephemeral_storage_gib >= 21 && var.ephemeral_storage_gib <= 200
    error_message = "ephemeral_storage_gib must be between 21 and 200 (Fargate's limits)."
  }
}
