output "load_balancer_dns_name" {
  description = "DNS name of the load balancer; point the registry's host name at it (CNAME or Route 53 alias)."
  value       = aws_lb.this.dns_name
}

output "load_balancer_zone_id" {
  description = "Route 53 hosted zone of the load balancer, for an alias record."
  value       = aws_lb.this.zone_id
}

output "load_balancer_arn" {
  description = "ARN of the load balancer."
  value       = aws_lb.this.arn
}

output "bucket_name" {
  description = "The registry bucket."
  value       = aws_s3_bucket.registry.bucket
}

output "bucket_arn" {
  description = "ARN of the registry bucket."
  value       = aws_s3_bucket.registry.arn
}

output "log_bucket_name" {
  description = "Bucket of the S3 and load balancer access logs."
  value       = aws_s3_bucket.logs.bucket
}

output "kms_key_arn" {
  description = "ARN of the customer-managed key (bucket, Redis, secrets, logs)."
  value       = aws_kms_key.this.arn
}

output "redis_primary_endpoint" {
  description = "Primary endpoint of the Redis replication group (TLS, AUTH token required)."
  value       = aws_elasticache_replication_group.redis.primary_endpoint_address
}

output "ecs_cluster_name" {
  description = "Name of the ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "ecs_service_name" {
  description = "Name of the ECS service running the replicas."
  value       = aws_ecs_service.berth.name
}

output "service_security_group_id" {
  description = "Security group of the replicas."
  value       = aws_security_group.service.id
}

output "alb_security_group_id" {
  description = "Security group of the load balancer."
  value       = aws_security_group.alb.id
}

output "task_role_arn" {
  description = "IAM role of the Berth tasks (bucket and key access)."
  value       = aws_iam_role.task.arn
}

output "execution_role_arn" {
  description = "IAM role ECS uses to start the tasks."
  value       = aws_iam_role.execution.arn
}

output "log_group_name" {
  description = "CloudWatch log group of the replicas."
  value       = aws_cloudwatch_log_group.berth.name
}

output "htpasswd_secret_arn" {
  description = "Secrets Manager secret holding the htpasswd file."
  value       = aws_secretsmanager_secret.htpasswd.arn
}

output "admin_password_secret_arn" {
  description = "Secrets Manager secret holding the generated admin password, or null when create_admin_user is false."
  value       = one(aws_secretsmanager_secret.admin_password[*].arn)
}

output "log_group_prefix" {
  description = "Prefix of the CloudWatch log groups the KMS key may encrypt; a root module can put further log groups (e.g. VPC flow logs) under it and use kms_key_arn."
  value       = local.log_group_prefix
}
