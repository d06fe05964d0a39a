# Three security groups, each rule described:
#   clients --443/80--> ALB --5000--> replicas --6379--> Redis
#                                     replicas --443---> S3, ECR, Secrets
#                                                        Manager, CloudWatch
#                                     replicas --5443--> replicas (the mesh,
#                                                        mutual TLS; with
#                                                        mesh_enabled)
# DNS to the VPC resolver is not subject to security groups.

resource "aws_security_group" "alb" {
  name_prefix = "${var.name}-alb-"
  description = "Berth ${var.name} load balancer: HTTPS from allowed clients, to the replicas only"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-alb" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "service" {
  name_prefix = "${var.name}-service-"
  description = "Berth ${var.name} replicas: port 5000 from the load balancer only"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-service" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "redis" {
  name_prefix = "${var.name}-redis-"
  description = "Berth ${var.name} Redis: 6379 from the replicas only, no egress"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-redis" })

  lifecycle {
    create_before_destroy = true
  }
}

# --- load balancer ----------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each          = toset(var.allowed_cidr_blocks)
  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from allowed clients (${each.value})"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  for_each          = toset(var.allowed_cidr_blocks)
  security_group_id = aws_security_group.alb.id
  description       = "HTTP from allowed clients (${each.value}), answered only with a redirect to HTTPS"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = each.value
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "alb_to_service" {
  security_group_id            = aws_security_group.alb.id
  description                  = "HTTPS to the Berth replicas and their health checks"
  ip_protocol                  = "tcp"
  from_port                    = local.container_port
  to_port                      = local.container_port
  referenced_security_group_id = aws_security_group.service.id
  tags                         = local.tags
}

# --- replicas ---------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "service_from_alb" {
  security_group_id            = aws_security_group.service.id
  description                  = "Registry traffic and health checks from the load balancer"
  ip_protocol                  = "tcp"
  from_port                    = local.container_port
  to_port                      = local.container_port
  referenced_security_group_id = aws_security_group.alb.id
  tags                         = local.tags
}

resource "aws_vpc_security_group_egress_rule" "service_https" {
  security_group_id = aws_security_group.service.id
  description       = "HTTPS to AWS APIs (S3, ECR, Secrets Manager, CloudWatch Logs) through NAT or VPC endpoints"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "service_to_redis" {
  security_group_id            = aws_security_group.service.id
  description                  = "Redis (TLS) of this deployment"
  ip_protocol                  = "tcp"
  from_port                    = local.redis_port
  to_port                      = local.redis_port
  referenced_security_group_id = aws_security_group.redis.id
  tags                         = local.tags
}

# --- Redis ------------------------------------------------------------------

resource "aws_vpc_security_group_ingress_rule" "redis_from_service" {
  security_group_id            = aws_security_group.redis.id
  description                  = "Redis (TLS) from the Berth replicas"
  ip_protocol                  = "tcp"
  from_port                    = local.redis_port
  to_port                      = local.redis_port
  referenced_security_group_id = aws_security_group.service.id
  tags                         = local.tags
}

# --- the replica mesh (mesh_enabled) ----------------------------------------

resource "aws_vpc_security_group_ingress_rule" "service_mesh" {
  count                        = var.mesh_enabled ? 1 : 0
  security_group_id            = aws_security_group.service.id
  description                  = "Replica mesh (mutual TLS) from the other Berth replicas"
  ip_protocol                  = "tcp"
  from_port                    = local.mesh_port
  to_port                      = local.mesh_port
  referenced_security_group_id = aws_security_group.service.id
  tags                         = local.tags
}

resource "aws_vpc_security_group_egress_rule" "service_mesh" {
  count                        = var.mesh_enabled ? 1 : 0
  security_group_id            = aws_security_group.service.id
  description                  = "Replica mesh (mutual TLS) to the other Berth replicas"
  ip_protocol                  = "tcp"
  from_port                    = local.mesh_port
  to_port                      = local.mesh_port
  referenced_security_group_id = aws_security_group.service.id
  tags                         = local.tags
}
