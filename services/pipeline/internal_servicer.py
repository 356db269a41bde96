"""``clipmind.pipeline.internal.v1.PipelineInternalService``: thin conversion to job control."""

from __future__ import annotations

import grpc.aio
from clipmind.pipeline.internal.v1 import pipeline_internal_service_pb2 as pb
from clipmind.pipeline.internal.v1 import pipeline_internal_service_pb2_grpc as pb_grpc

from services.common import priority
from services.common.errors import invalid_field
from services.common.grpc_server import Context
from services.common.names import job_name, parse_user_name, parse_video_name
from services.pipeline.jobs import JobControl


class PipelineInternalServicer(pb_grpc.PipelineInternalServiceServicer):
    def __init__(self, control: JobControl) -> None:
        self._control = control

    async def SubmitVideoJob(self, request: pb.SubmitVideoJobRequest, context: Context) -> pb.SubmitVideoJobResponse:
        video_id = parse_video_name(request.video, "video")
        if request.generation < 1:
            raise invalid_field("generation", "must be 1 or more")
        # Required: a job without an owner would be nobody's (only administrators would ever see it).
        owner_id = parse_user_name(request.owner, "owner")
        job, created = await self._control.submit(video_id, request.generation, owner_id,
                                                  priority.from_pb(request.priority))
        return pb.SubmitVideoJobResponse(job=job_name(job.id), created=created)

    async def DeleteVideoJobs(self, request: pb.DeleteVideoJobsRequest, context: Context) -> pb.DeleteVideoJobsResponse:
        video_id = parse_video_name(request.video, "video")
        return pb.DeleteVideoJobsResponse(deleted_count=await self._control.delete_video_jobs(video_id))


def register(server: grpc.aio.Server, servicer: PipelineInternalServicer) -> str:
    pb_grpc.add_PipelineInternalServiceServicer_to_server(servicer, server)
    return pb.DESCRIPTOR.services_by_name["PipelineInternalService"].full_name
