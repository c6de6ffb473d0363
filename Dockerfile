# The one Shoal image: `shoal agent`, `shoal scheduler` and `shoal webhook` (see deploy/charts/shoal).
FROM python:3.12-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.12-slim-bookworm
LABEL org.opencontainers.image.title="shoal" \
      org.opencontainers.image.description="Peer-to-peer container image distribution for Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /install /usr/local
COPY deploy/charts/shoal /usr/share/shoal/charts/shoal
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 SHOAL_CHART=/usr/share/shoal/charts/shoal
# The agent writes its cache under /var/lib/shoal (an emptyDir or a hostPath in the chart).
RUN mkdir -p /var/lib/shoal
EXPOSE 65001 8002 8443
ENTRYPOINT ["shoal"]
CMD ["--help"]
