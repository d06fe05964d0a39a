terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.0"
    }
  }

  # Keep the state remote and encrypted: it holds the generated Redis AUTH
  # token, the admin password and the replicas' TLS key. For example:
  # backend "s3" {
  #   bucket       = "my-terraform-state"
  #   key          = "berth/terraform.tfstate"
  #   region       = "eu-west-1"
  #   encrypt      = true
  #   use_lockfile = true
  # }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Application = "berth"
      ManagedBy   = "terraform"
      Environment = var.environment
    }
  }
}
