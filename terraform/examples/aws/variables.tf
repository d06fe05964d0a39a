variable "region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "eu-west-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as eu-west-1."
  }
}

variable "environment" {
  description = "Environment tag (e.g. staging, production)."
  type        = string
  default     = "production"
}

variable "name" {
  description = "Name of the deployment (see the module's variable of the same name)."
  type        = string
  default     = "berth"
}

variable "availability_zones" {
  description = "The two availability zones to use; null: <region>a and <region>b."
  type        = list(string)
  default     = null

  validation {
    condition     = var.availability_zones == null ? true : length(var.availability_zones) == 2
    error_message = "availability_zones must name exactly two zones, or be null."
  }
}

variable "vpc_cidr" {
  description = "IPv4 range of the VPC; split into two public and two private subnets."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be a valid IPv4 CIDR block of /20 or larger."
  }
}

variable "image" {
  description = "Berth image, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/berth:1.2.3."
  type        = string
}

variable "ecr_repository_arn" {
  description = "ARN of the ECR repository holding the image (null for a public image)."
  type        = string
  default     = null
}

variable "certificate_arn" {
  description = "ACM certificate for the registry's host name, in the same region."
  type        = string
}

variable "allowed_cidr_blocks" {
  description = "Client ranges allowed to reach the registry (e.g. your offices and CI runners; [\"0.0.0.0/0\"] for a public registry)."
  type        = list(string)
}

variable "desired_count" {
  description = "Number of Berth replicas."
  type        = number
  default     = 3
}

variable "alb_deletion_protection" {
  description = "Deletion protection of the load balancer; set false before terraform destroy."
  type        = bool
  default     = true
}

variable "flow_log_retention_days" {
  description = "Retention of the VPC flow logs in CloudWatch Logs."
  type        = number
  default     = 365
}
