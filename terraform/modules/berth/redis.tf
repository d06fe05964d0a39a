# Redis holds what may be lost: upload sessions, cache invalidation,
# locks, rate-limit and login-throttle counters. It still gets failover,
# encryption and snapshots, because losing it interrupts pushes in flight.

resource "aws_elasticache_subnet_group" "redis" {
  name        = "${var.name}-redis"
  description = "Private subnets of the ${var.name} Berth Redis"
  subnet_ids  = var.private_subnet_ids
  tags        = local.tags
}

resource "aws_cloudwatch_log_group" "redis_slow" {
  name              = "${local.log_group_prefix}/redis/slow-log"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_cloudwatch_log_group" "redis_engine" {
  name              = "${local.log_group_prefix}/redis/engine-log"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_elasticache_replication_group" "redis" {
  replication_group_id = "${var.name}-redis"
  description          = "Shared state of the ${var.name} Berth fleet"

  engine               = "redis"
  engine_version       = var.redis_engine_version
  parameter_group_name = var.redis_parameter_group_name
  node_type            = var.redis_node_type
  port                 = local.redis_port

  # Cluster mode stays disabled: Berth uses the single primary endpoint.
  num_cache_clusters         = var.redis_num_cache_clusters
  automatic_failover_enabled = true
  multi_az_enabled           = true

  subnet_group_name  = aws_elasticache_subnet_group.redis.name
  security_group_ids = [aws_security_group.redis.id]

  transit_encryption_enabled = true
  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.this.arn
  auth_token                 = random_password.redis_auth.result

  snapshot_retention_limit   = var.redis_snapshot_retention_days
  snapshot_window            = var.redis_snapshot_window
  maintenance_window         = var.redis_maintenance_window
  auto_minor_version_upgrade = true
  apply_immediately          = false

  log_delivery_configuration {
    destination      = aws_cloudwatch_log_group.redis_slow.name
    destination_type = "cloudwatch-logs"
    log_format       = "json"
    log_type         = "slow-log"
  }

  log_delivery_configuration {
    destination      = aws_cloudwatch_log_group.redis_engine.name
    destination_type = "cloudwatch-logs"
    log_format       = "json"
    log_type         = "engine-log"
  }

  tags = local.tags
}
