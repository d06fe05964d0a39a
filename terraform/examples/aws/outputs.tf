output "registry_dns_name" {
  description = "Point the certificate's host name at this (CNAME, or a Route 53 alias with registry_zone_id)."
  value       = module.berth.load_balancer_dns_name
}

output "registry_zone_id" {
  description = "Route 53 zone of the load balancer, for an alias record."
  value       = module.berth.load_balancer_zone_id
}

output "bucket_name" {
  description = "The registry bucket."
  value       = module.berth.bucket_name
}

output "admin_password_secret_arn" {
  description = "Secret holding the generated admin password: aws secretsmanager get-secret-value --secret-id <this>."
  value       = module.berth.admin_password_secret_arn
}

output "vpc_id" {
  description = "The VPC created for the example."
  value       = aws_vpc.this.id
}
