# Secrets the replicas read at start-up, all in Secrets Manager under this
# deployment's KMS key. ECS injects them as environment variables: Berth
# reads the Redis password from BERTH__STATE__REDIS__PASSWORD; the htpasswd
# file and the TLS pair are written to files by the init container (see
# ecs.tf), since Berth reads those from paths.
#
# The values are generated here and therefore also sit in the Terraform
# state: keep the state in an encrypted backend with restricted access.

# --- Redis AUTH token -------------------------------------------------------

# ElastiCache accepts 16-128 printable characters and, of the specials, only
# ! & # $ ^ < > -. "#" and "-" are left out as well: the value reaches Berth
# through an environment variable that Berth reads as a TOML value when it
# parses as one, and a token such as "123#..." would parse as a number.
resource "random_password" "redis_auth" {
  length           = 64
  special          = true
  override_special = "!&$^<>"
  min_special      = 2
  min_upper        = 2
  min_lower        = 2
  min_numeric      = 2
}

resource "aws_secretsmanager_secret" "redis_auth" {
  #checkov:skip=CKV2_AWS_57:An ElastiCache AUTH token cannot be rotated by Secrets Manager alone (it needs a rotation Lambda calling ModifyReplicationGroup); rotate by tainting random_password.redis_auth, which ElastiCache applies with the ROTATE strategy, then redeploy.
  name                    = "berth/${var.name}/redis-auth-token"
  description             = "AUTH token of the ${var.name} Berth Redis replication group"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "redis_auth" {
  secret_id     = aws_secretsmanager_secret.redis_auth.id
  secret_string = random_password.redis_auth.result
}

# --- htpasswd ---------------------------------------------------------------

# One admin user with a generated password (create_admin_user); the plain
# password goes to its own secret for the operator to read. The count uses a
# separate, non-sensitive switch: Terraform refuses counts derived from a
# sensitive value such as var.htpasswd.
resource "random_password" "admin" {
  count            = var.create_admin_user ? 1 : 0
  length           = 32
  special          = true
  override_special = "-_.~"
}

resource "aws_secretsmanager_secret" "admin_password" {
  #checkov:skip=CKV2_AWS_57:The bootstrap admin password is a credential a person uses; rotating it automatically would lock the operator out. Replace it by supplying htpasswd.
  count                   = var.create_admin_user ? 1 : 0
  name                    = "berth/${var.name}/admin-password"
  description             = "Password of the ${var.admin_username} user of the ${var.name} Berth registry"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "admin_password" {
  count         = var.create_admin_user ? 1 : 0
  secret_id     = aws_secretsmanager_secret.admin_password[0].id
  secret_string = random_password.admin[0].result
}

locals {
  # random_password's bcrypt_hash is stable across plans (Terraform's own
  # bcrypt() is not); Berth accepts $2a$ bcrypt entries.
  admin_htpasswd_line = var.create_admin_user ? "${var.admin_username}:${random_password.admin[0].bcrypt_hash}\n" : ""
  htpasswd_content    = "${local.admin_htpasswd_line}${var.htpasswd}"
}

resource "aws_secretsmanager_secret" "htpasswd" {
  #checkov:skip=CKV2_AWS_57:The htpasswd file holds password hashes chosen by people; there is nothing a rotation function could generate in their place.
  name                    = "berth/${var.name}/htpasswd"
  description             = "htpasswd file of the ${var.name} Berth registry"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "htpasswd" {
  secret_id     = aws_secretsmanager_secret.htpasswd.id
  secret_string = local.htpasswd_content
}

# --- TLS between the load balancer and the replicas ------------------------

# The load balancer re-encrypts to the replicas but never verifies their
# certificate (not its name, chain or expiry), so a self-signed pair is as
# good as any here; it keeps the traffic encrypted inside the VPC.
resource "tls_private_key" "replica" {
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_self_signed_cert" "replica" {
  private_key_pem       = tls_private_key.replica.private_key_pem
  validity_period_hours = 24 * 365 * 5
  early_renewal_hours   = 24 * 30
  allowed_uses          = ["digital_signature", "key_encipherment", "server_auth"]
  dns_names             = ["${var.name}.berth.internal"]

  subject {
    common_name  = "${var.name}.berth.internal"
    organization = "Berth"
  }
}

resource "aws_secretsmanager_secret" "tls" {
  #checkov:skip=CKV2_AWS_57:The replica TLS pair is regenerated by Terraform (early_renewal_hours) and picked up by the next deployment; a Secrets Manager rotation Lambda would add nothing.
  name                    = "berth/${var.name}/replica-tls"
  description             = "TLS certificate and key the ${var.name} Berth replicas serve to the load balancer"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "tls" {
  secret_id = aws_secretsmanager_secret.tls.id
  secret_string = jsonencode({
    cert = tls_self_signed_cert.replica.cert_pem
    key  = tls_private_key.replica.private_key_pem
  })
}

# The replica mesh's own CA: any certificate it signs is a peer, so it signs
# nothing else. One certificate for every task (tasks are dialed by address
# and checked against the DNS name "berth-mesh"), usable as server and
# client certificate.
resource "tls_private_key" "mesh_ca" {
  count       = var.mesh_enabled ? 1 : 0
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_self_signed_cert" "mesh_ca" {
  count                 = var.mesh_enabled ? 1 : 0
  private_key_pem       = tls_private_key.mesh_ca[0].private_key_pem
  is_ca_certificate     = true
  validity_period_hours = 24 * 365 * 10
  allowed_uses          = ["cert_signing", "crl_signing"]

  subject {
    common_name  = "${var.name} Berth mesh CA"
    organization = "Berth"
  }
}

resource "tls_private_key" "mesh" {
  count       = var.mesh_enabled ? 1 : 0
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_cert_request" "mesh" {
  count           = var.mesh_enabled ? 1 : 0
  private_key_pem = tls_private_key.mesh[0].private_key_pem
  dns_names       = ["berth-mesh"]

  subject {
    common_name  = "${var.name} Berth replica"
    organization = "Berth"
  }
}

resource "tls_locally_signed_cert" "mesh" {
  count                 = var.mesh_enabled ? 1 : 0
  cert_request_pem      = tls_cert_request.mesh[0].cert_request_pem
  ca_private_key_pem    = tls_private_key.mesh_ca[0].private_key_pem
  ca_cert_pem           = tls_self_signed_cert.mesh_ca[0].cert_pem
  validity_period_hours = 24 * 365
  early_renewal_hours   = 24 * 30
  allowed_uses          = ["digital_signature", "server_auth", "client_auth"]
}

resource "aws_secretsmanager_secret" "mesh_tls" {
  #checkov:skip=CKV2_AWS_57:The mesh pair is regenerated by Terraform (early_renewal_hours) and picked up by the next deployment; a Secrets Manager rotation Lambda would add nothing.
  count                   = var.mesh_enabled ? 1 : 0
  name                    = "berth/${var.name}/mesh-tls"
  description             = "Fleet CA, certificate and key of the ${var.name} Berth replica mesh"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "mesh_tls" {
  count     = var.mesh_enabled ? 1 : 0
  secret_id = aws_secretsmanager_secret.mesh_tls[0].id
  secret_string = jsonencode({
    ca   = tls_self_signed_cert.mesh_ca[0].cert_pem
    cert = tls_locally_signed_cert.mesh[0].cert_pem
    key  = tls_private_key.mesh[0].private_key_pem
  })
}
