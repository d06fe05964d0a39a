resource "aws_cloudwatch_log_group" "berth" {
  name              = "${local.log_group_prefix}/berth"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_cloudwatch_log_group" "ecs_exec" {
  name              = "${local.log_group_prefix}/ecs-exec"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  # ECS Exec is not enabled on the service (the image has no shell); should
  # someone enable it, its sessions are encrypted with the key and logged.
  configuration {
    execute_command_configuration {
      kms_key_id = aws_kms_key.this.arn
      logging    = "OVERRIDE"

      log_configuration {
        cloud_watch_encryption_enabled = true
        cloud_watch_log_group_name     = aws_cloudwatch_log_group.ecs_exec.name
      }
    }
  }

  tags = local.tags
}

locals {
  # Berth runs with built-in defaults plus these BERTH__SECTION__KEY
  # variables (no config file): `serve` without --config.
  berth_environment = merge(
    {
      BERTH__SERVER__LISTEN         = "0.0.0.0:${local.container_port}"
      BERTH__SERVER__TLS__CERT_FILE = "${local.secrets_dir}/tls.crt"
      BERTH__SERVER__TLS__KEY_FILE  = "${local.secrets_dir}/tls.key"
      # The load balancer's nodes live in its subnets; only their
      # X-Forwarded-For is believed. A TOML array, read as one.
      BERTH__SERVER__TRUSTED_PROXIES = jsonencode(sort([for s in data.aws_subnet.lb : s.cidr_block]))
      # ECS drains the target from the load balancer before it sends
      # SIGTERM, so a short delay suffices; in-flight requests get the grace.
      BERTH__SERVER__SHUTDOWN_DELAY = "5s"
      BERTH__SERVER__SHUTDOWN_GRACE = "30s"

      BERTH__STORAGE__BACKEND        = "s3"
      BERTH__STORAGE__S3__BUCKET     = aws_s3_bucket.registry.bucket
      BERTH__STORAGE__S3__REGION     = local.region
      BERTH__STORAGE__S3__ENCRYPTION = "kms"
      BERTH__STORAGE__S3__KMS_KEY_ID = aws_kms_key.this.arn
      BERTH__STATE__BACKEND          = "redis"
      BERTH__STATE__REDIS__URL       = "rediss://${aws_elasticache_replication_group.redis.primary_endpoint_address}:${local.redis_port}/0"
      BERTH__AUTH__HTPASSWD          = "${local.secrets_dir}/htpasswd"
      BERTH__LOG__FORMAT             = "json"
      BERTH__LOG__LEVEL              = var.log_level
    },
    var.storage_prefix == "" ? {} : { BERTH__STORAGE__S3__PREFIX = var.storage_prefix },
    # The blob cache and the mesh. `mesh.advertise` (the task's own address,
    # known only at run time) comes from the file the init container writes.
    !var.mesh_enabled ? {} : {
      BERTH__STORAGE__DELIVERY       = "cache"
      BERTH__CACHE__BLOBS__DIR       = local.cache_dir
      BERTH__CACHE__BLOBS__MAX_BYTES = var.blob_cache_max_bytes
      BERTH__MESH__LISTEN            = "0.0.0.0:${local.mesh_port}"
      BERTH__MESH__CA_FILE           = "${local.secrets_dir}/mesh-ca.crt"
      BERTH__MESH__CERT_FILE         = "${local.secrets_dir}/mesh.crt"
      BERTH__MESH__KEY_FILE          = "${local.secrets_dir}/mesh.key"
    },
    var.extra_environment,
  )

  awslogs_options = {
    awslogs-group         = aws_cloudwatch_log_group.berth.name
    awslogs-region        = local.region
    awslogs-stream-prefix = "berth"
  }

  # Runs to completion before Berth starts: writes the secrets Berth reads
  # from files into the "secrets" volume and makes /tmp writable for uid
  # 65532 (Fargate creates task volumes owned by root, mode 0755). It runs as
  # root, which owns those volumes, but with every capability dropped.
  init_container = {
    name                   = "secrets-init"
    image                  = var.init_image
    essential              = false
    user                   = "0"
    readonlyRootFilesystem = true
    privileged             = false
    entryPoint             = ["/bin/sh", "-c"]
    command = [join(" && ", concat([
      "set -eu",
      "umask 022",
      "printf '%s' \"$BERTH_HTPASSWD\" > ${local.secrets_dir}/htpasswd",
      "printf '%s\\n' \"$BERTH_TLS_CERT\" > ${local.secrets_dir}/tls.crt",
      "printf '%s\\n' \"$BERTH_TLS_KEY\" > ${local.secrets_dir}/tls.key",
      "chmod 1777 /tmp",
      ], !var.mesh_enabled ? [] : [
      "printf '%s\\n' \"$BERTH_MESH_CA\" > ${local.secrets_dir}/mesh-ca.crt",
      "printf '%s\\n' \"$BERTH_MESH_CERT\" > ${local.secrets_dir}/mesh.crt",
      "printf '%s\\n' \"$BERTH_MESH_KEY\" > ${local.secrets_dir}/mesh.key",
      # The task's own address in the VPC, from the ECS task metadata
      # endpoint: what the other tasks dial.
      "ip=$(wget -qO- \"$ECS_CONTAINER_METADATA_URI_V4\" | sed -n 's/.*\"IPv4Addresses\":\\[\"\\([0-9.]*\\)\".*/\\1/p')",
      "test -n \"$ip\"",
      "printf '[mesh]\\nadvertise = \"%s:${local.mesh_port}\"\\n' \"$ip\" > ${local.secrets_dir}/mesh.toml",
      # Fargate lets no container add CAP_CHOWN: like /tmp, the volume (this
      # task's alone) becomes writable for uid 65532, which creates the
      # cache's directories itself.
      "chmod 1777 ${local.cache_dir}",
    ]))]
    secrets = concat([
      { name = "BERTH_HTPASSWD", valueFrom = aws_secretsmanager_secret.htpasswd.arn },
      { name = "BERTH_TLS_CERT", valueFrom = "${aws_secretsmanager_secret.tls.arn}:cert::" },
      { name = "BERTH_TLS_KEY", valueFrom = "${aws_secretsmanager_secret.tls.arn}:key::" },
      ], !var.mesh_enabled ? [] : [
      { name = "BERTH_MESH_CA", valueFrom = "${aws_secretsmanager_secret.mesh_tls[0].arn}:ca::" },
      { name = "BERTH_MESH_CERT", valueFrom = "${aws_secretsmanager_secret.mesh_tls[0].arn}:cert::" },
      { name = "BERTH_MESH_KEY", valueFrom = "${aws_secretsmanager_secret.mesh_tls[0].arn}:key::" },
    ])
    mountPoints = concat([
      { sourceVolume = "secrets", containerPath = local.secrets_dir, readOnly = false },
      { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
      ], !var.mesh_enabled ? [] : [
      { sourceVolume = "cache", containerPath = local.cache_dir, readOnly = false },
    ])
    linuxParameters = {
      initProcessEnabled = true
      capabilities       = { drop = ["ALL"] }
    }
    logConfiguration = {
      logDriver = "awslogs"
      options   = merge(local.awslogs_options, { awslogs-stream-prefix = "secrets-init" })
    }
  }

  berth_container = {
    name      = "berth"
    image     = var.image
    essential = true
    # With the mesh, the file the init container wrote supplies
    # mesh.advertise; everything else comes from the environment.
    command                = var.mesh_enabled ? ["serve", "--config", "${local.secrets_dir}/mesh.toml"] : ["serve"]
    user                   = "65532"
    readonlyRootFilesystem = true
    privileged             = false
    portMappings = concat([
      { containerPort = local.container_port, protocol = "tcp" },
      ], !var.mesh_enabled ? [] : [
      { containerPort = local.mesh_port, protocol = "tcp" },
    ])
    environment = [for k in sort(keys(local.berth_environment)) : { name = k, value = local.berth_environment[k] }]
    secrets = [
      { name = "BERTH__STATE__REDIS__PASSWORD", valueFrom = aws_secretsmanager_secret.redis_auth.arn },
    ]
    mountPoints = concat([
      { sourceVolume = "secrets", containerPath = local.secrets_dir, readOnly = true },
      { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
      ], !var.mesh_enabled ? [] : [
      { sourceVolume = "cache", containerPath = local.cache_dir, readOnly = false },
    ])
    dependsOn = [
      { containerName = "secrets-init", condition = "SUCCESS" },
    ]
    linuxParameters = {
      initProcessEnabled = true
      capabilities       = { drop = ["ALL"] }
    }
    # Above shutdown_delay + shutdown_grace; Fargate allows at most 120.
    stopTimeout = 60
    ulimits = [
      { name = "nofile", softLimit = 65535, hardLimit = 65535 },
    ]
    logConfiguration = {
      logDriver = "awslogs"
      options   = local.awslogs_options
    }
  }
}

resource "aws_ecs_task_definition" "berth" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.task_cpu
  memory                   = var.task_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  # Both on the task's ephemeral storage, which Fargate encrypts; they
  # vanish with the task.
  volume {
    name = "secrets"
  }

  volume {
    name = "tmp"
  }

  # The blob cache (with mesh_enabled): verified copies of hot blobs, lost
  # with the task and refilled from the mesh or S3.
  volume {
    name = "cache"
  }

  ephemeral_storage {
    size_in_gib = var.ephemeral_storage_gib
  }

  container_definitions = jsonencode([local.init_container, local.berth_container])

  tags = local.tags
}

resource "aws_ecs_service" "berth" {
  name             = var.name
  cluster          = aws_ecs_cluster.this.id
  task_definition  = aws_ecs_task_definition.berth.arn
  desired_count    = var.desired_count
  launch_type      = "FARGATE"
  platform_version = var.platform_version

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.service.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.berth.arn
    container_name   = "berth"
    container_port   = local.container_port
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  health_check_grace_period_seconds  = 30
  enable_execute_command             = false
  enable_ecs_managed_tags            = true
  propagate_tags                     = "SERVICE"

  tags = local.tags

  depends_on = [aws_lb_listener.https, aws_iam_role_policy.execution, aws_iam_role_policy.task]
}
