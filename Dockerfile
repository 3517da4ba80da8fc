# The control plane image: `make docker-build` (IMG=xds-operator:latest), deployed by config/manager.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/xds-operator
WORKDIR /src
COPY pyproject.toml README.md ./
COPY xds_operator ./xds_operator
# The package and its runtime dependencies only (not the [test] extra).
RUN /opt/xds-operator/bin/pip install . && /opt/xds-operator/bin/pip uninstall --yes pip

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/xds-operator /opt/xds-operator
ENV PATH=/opt/xds-operator/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# A numeric non-root user, so Kubernetes can check runAsNonRoot against the image.
USER 65532:65532
WORKDIR /tmp
EXPOSE 18000 19000
ENTRYPOINT ["xds-operator"]
CMD ["serve"]
