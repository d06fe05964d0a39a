module "berth" {
  source = "../../modules/berth"

  name               = var.name
  vpc_id             = aws_vpc.this.id
  private_subnet_ids = aws_subnet.private[*].id
  public_subnet_ids  = aws_subnet.public[*].id

  image              = var.image
  ecr_repository_arn = var.ecr_repository_arn
  desired_count      = var.desired_count

  certificate_arn         = var.certificate_arn
  allowed_cidr_blocks     = var.allowed_cidr_blocks
  alb_deletion_protection = var.alb_deletion_protection
}
